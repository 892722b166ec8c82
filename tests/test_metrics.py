"""metrics.py: what the classifier logs, and how TensorBoard's HPARAMS tab shows the options."""


def test_hparams_tab_shows_options_not_internals():
    """The HPARAMS tab: no LightningCLI internals (_class_path, _instantiator), booleans and None as words."""
    from lora_lightning.metrics import hparams_for_board

    shown = hparams_for_board({"r": 4, "_instantiator": "x", "data._class_path": "y", "use_dora": False,
                               "loraplus_lr_ratio": None, "target_modules": ["query", "value"], "learning_rate": 1e-3})
    assert shown == {"r": 4, "use_dora": "false", "loraplus_lr_ratio": "null", "target_modules": "['query', 'value']",
                     "learning_rate": 1e-3}


def test_class_names_are_drawn_as_written():
    """C35: class names are data: `$`, `$$` (price ranges), `a_b`, `x^2` are drawn literally in the confusion figure,
    never parsed as mathtext (which stopped the first validation with a ParseException)."""
    import torch

    from lora_lightning.metrics import confusion_figure, confusion_matrix

    names = ["$", "$$", "$$$ a_b", "x^2 $"]
    fig = confusion_figure(confusion_matrix(4), torch.eye(4, dtype=torch.long) * 3, names, "val confusion matrix, step 9")
    fig.canvas.draw()  # what TensorBoard's add_figure does
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names == [t.get_text() for t in ax.get_yticklabels()]
