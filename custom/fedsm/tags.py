"""Every TensorBoard tag (and validation-metric name) of FedSM and its baselines, defined once."""

GLOBAL_METRIC = "val_metric_global_model"
PERSONALIZED_METRIC = "val_metric_person_model"
SELECTOR_METRIC = "val_metric_select_model"
SELECTOR_CONFIDENCE = "val_confidence_select_model"
METRIC_TAGS = (GLOBAL_METRIC, PERSONALIZED_METRIC, SELECTOR_METRIC, SELECTOR_CONFIDENCE)

GLOBAL_LOSS = "train_loss"
PERSONALIZED_LOSS = "train_loss_personalized"
SELECTOR_LOSS = "train_loss_selector"
LOSS_TAGS = (GLOBAL_LOSS, PERSONALIZED_LOSS, SELECTOR_LOSS)
