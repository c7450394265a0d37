"""The server's `client_id_label_mapping`: which selector label each client's images carry."""

LABEL_MAPPING = "client_id_label_mapping"


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


def configured_label_mapping(server_config: dict, num_classes: int,
                             source: str = "config_fed_server.json") -> dict[str, int]:
    """The checked `client_id_label_mapping` of the one workflow of a server config; errors name `source`."""
    workflows = server_config.get("workflows", [])
    if len(workflows) != 1 or LABEL_MAPPING not in workflows[0].get("args", {}):
        raise ValueError(f"{source}: expected one workflow with the argument '{LABEL_MAPPING}'")
    try:
        return check_label_mapping(workflows[0]["args"][LABEL_MAPPING], num_classes)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def label_of(mapping: dict[str, int], client: str) -> int:
    """The selector label of `client`; an error naming it when the mapping does not."""
    if client not in mapping:
        raise ValueError(f"client '{client}' is not in {LABEL_MAPPING} {mapping}")
    return mapping[client]
