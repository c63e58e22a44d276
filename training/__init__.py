"""distilserve training: pretrained weights -> task teachers -> distilled students -> models/.

Run ``python -m training --help`` for the commands.
"""
