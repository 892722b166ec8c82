"""metrics.py: what the classifier logs, and how TensorBoard's HPARAMS tab shows the options."""


def test_hparams_tab_shows_options_not_internals():
    """The HPARAMS tab: no LightningCLI internals (_class_path, _instantiator), booleans and None as words."""
    from lora_lightning.metrics import hparams_for_board

    shown = hparams_for_board({"r": 4, "_instantiator": "x", "data._class_path": "y", "use_dora": False,
                               "loraplus_lr_ratio": None, "target_modules": ["query", "value"], "learning_rate": 1e-3})
    assert shown == {"r": 4, "use_dora": "false", "loraplus_lr_ratio": "null", "target_modules": "['query', 'value']",
                     "learning_rate": 1e-3}
