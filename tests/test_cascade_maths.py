"""The cascade's calibration maths: the least escalation within the tolerance of the teacher."""

from __future__ import annotations

import pytest

from inference.cascade import calibrate, confidence, sweep


def test_sweep_escalates_the_least_confident_first() -> None:
    conf = [0.9, 0.2, 0.6, 0.4]
    student = [1.0, 0.0, 1.0, 0.0]
    teacher = [1.0, 1.0, 1.0, 0.0]
    points = sweep(conf, student, teacher)
    assert points[0] == (0.0, 0.0, 0.5)
    assert points[1] == (pytest.approx(0.4), 0.25, 0.75)  # item 1 (0.2) escalated: teacher right
    assert points[-1][1] == 1.0
    assert points[-1][2] == pytest.approx(0.75)  # all escalated: the teacher's accuracy


def test_calibrate_picks_the_least_escalation_within_tolerance() -> None:
    conf = [0.95, 0.9, 0.85, 0.3, 0.2, 0.1]
    student = [1, 1, 1, 0, 1, 0]
    teacher = [1, 1, 1, 1, 1, 1]
    found = calibrate("top_probability", conf, student, teacher, tolerance=0.0)
    assert found.escalation_rate == pytest.approx(3 / 6)  # 0.3 is wrong: the three below 0.85 go
    assert found.cascade_quality == pytest.approx(1.0)
    assert found.threshold == pytest.approx(0.85)
    loose = calibrate("top_probability", conf, student, teacher, tolerance=0.34)
    assert loose.escalation_rate == 0.0  # 4/6 is within 0.34 of 1.0


def test_ties_are_escalated_together_and_margin_reads_the_second_label() -> None:
    points = sweep([0.5, 0.5, 0.9], [0, 0, 1], [1, 1, 1])
    assert [p[1] for p in points] == [0.0, pytest.approx(2 / 3), 1.0]
    assert confidence("margin", [{"score": 0.7}, {"score": 0.2}]) == pytest.approx(0.5)
    assert confidence("span_score", []) == 0.0
    with pytest.raises(ValueError, match="unknown cascade confidence"):
        confidence("entropy", [{"score": 1.0}])
