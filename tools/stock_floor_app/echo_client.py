"""The client of `tools/stock_floor.py`: takes each task's model and sends it back unchanged, with no
compute, through NVFlare's Client API."""

import nvflare.client as flare


def main() -> None:
    flare.init()
    while flare.is_running():
        model = flare.receive()
        flare.send(flare.FLModel(params=model.params, metrics={"accuracy": 0.0},
                                 meta={"NUM_STEPS_CURRENT_ROUND": 1}))


if __name__ == "__main__":
    main()
