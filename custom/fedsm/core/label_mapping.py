"""The server's `client_id_label_mapping`: which selector label each client's images carry."""


def check_label_mapping(mapping: dict, num_classes: int) -> dict[str, int]:
    """Validate `client_id_label_mapping`: distinct integer labels in [0, select_num_classes)."""
    if not mapping:
        raise ValueError("client_id_label_mapping is empty")
    labels = {}
    for client, label in mapping.items():
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
            raise ValueError(f"client_id_label_mapping['{client}'] = {label!r} is not a label in [0, {num_classes})")
        labels[client] = label
    if len(set(labels.values())) != len(labels):
        raise ValueError(f"client_id_label_mapping gives two clients the same label: {mapping}")
    return labels
