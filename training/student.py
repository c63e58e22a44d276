"""Make a student: fewer layers, initialised from every other teacher layer (DistilBERT).

The student keeps the teacher's embeddings and task head and takes teacher layer ``map[i]`` as
its layer ``i``; any BERT-like HF model (BERT, MPNet, DistilBERT) works, because the copy is a
state-dict key rewrite of the layer index only.
"""
from __future__ import annotations

import copy
import re

from transformers import PreTrainedModel

from training.modeling import num_layers

LAYER_KEY = re.compile(r"^(.*\.(?:encoder|transformer)\.layer\.)(\d+)(\..*)$")


def default_layer_map(teacher_layers: int, student_layers: int | None = None) -> list[int]:
    """Every other teacher layer, from 0: 12 -> [0, 2, 4, 6, 8, 10]."""
    student_layers = student_layers or max(1, teacher_layers // 2)
    step = teacher_layers // student_layers
    return [i * step for i in range(student_layers)]


def parse_layer_map(text: str | None, teacher_layers: int) -> list[int]:
    """'0,2,4' -> [0, 2, 4]; None -> the default map. Rejects indices outside the teacher."""
    if not text:
        return default_layer_map(teacher_layers)
    layer_map = [int(part) for part in str(text).replace(" ", "").split(",") if part]
    bad = [i for i in layer_map if not 0 <= i < teacher_layers]
    if bad or not layer_map:
        raise ValueError(f"layer map {text!r} must name layers 0..{teacher_layers - 1}")
    return layer_map


def make_student(teacher: PreTrainedModel, layer_map: list[int]) -> PreTrainedModel:
    """A new model of the teacher's class with len(layer_map) layers; layer i := teacher layer map[i]."""
    config = copy.deepcopy(teacher.config)
    attr = "n_layers" if config.model_type == "distilbert" else "num_hidden_layers"
    setattr(config, attr, len(layer_map))
    student = type(teacher)(config)
    source = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        match = LAYER_KEY.match(key)
        teacher_key = f"{match[1]}{layer_map[int(match[2])]}{match[3]}" if match else key
        state[key] = source[teacher_key].detach().clone()
    student.load_state_dict(state, strict=True)
    if num_layers(student) != len(layer_map):
        raise ValueError(f"a {config.model_type} student built with {attr}={len(layer_map)} has "
                         f"{num_layers(student)} layers: this architecture sets its depth otherwise")
    return student
