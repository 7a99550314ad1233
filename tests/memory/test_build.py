import pytest

from duomem_fast.memory import lm_script, memory_from_record, parse_task, rule_script
from duomem_fast.memory.synthetic import TEMPLATES

HEAT = ["go to cabinet 1", "open cabinet 1", "go to countertop 2", "take potato 1 from countertop 2",
        "go to microwave 1", "heat potato 1 with microwave 1", "go to sinkbasin 1", "move potato 1 to sinkbasin 1"]


def test_parse_every_template():
    for task_type, templates in TEMPLATES.items():
        for t in templates:
            parts = parse_task("Your task is to: " + t.format(obj="mug", recep="desklamp"))
            assert parts == (task_type, "mug", "desklamp"), t
    assert parse_task("dance with the robot") is None


def test_rule_script_generalises_heat_trajectory():
    s = rule_script("put a hot potato in sinkbasin.", HEAT)
    assert s.splitlines() == [
        "Procedure:",
        "1. find the <object>: go to the likely receptacles one by one (cabinet, countertop), open closed ones and "
        "look, until you see it (here it was in the countertop).",
        "2. take <object> from countertop.",
        "3. go to microwave, then heat <object> with microwave.",
        "4. go to <target>, then move <object> to <target>."]


def test_rule_script_two_objects_and_lamp():
    two = rule_script("find two pillow and put them in sofa.", [
        "go to armchair 1", "take pillow 1 from armchair 1", "go to sofa 1", "move pillow 1 to sofa 1",
        "go to bed 1", "go to armchair 2", "take pillow 2 from armchair 2", "go to sofa 1", "put pillow 2 in/on sofa 1"])
    assert "find another <object>" in two and two.count("move <object> to <target>") == 2
    lamp = rule_script("look at bowl under the desklamp.",
                       ["go to shelf 1", "take bowl 1 from shelf 1", "go to sidetable 1", "go to dresser 1", "use desklamp 1"])
    assert "use <light>" in lamp and "(sidetable, dresser)" in lamp and " 1" not in lamp


def test_lm_script_keeps_numbered_steps_and_rejects_junk():
    prompts = []

    def complete(p):
        prompts.append(p)
        return "Sure! Here it is:\n1. Go to the countertop.\n2) take the potato\nThanks"
    s = lm_script("put a hot potato in sinkbasin.", HEAT, complete)
    assert s == "Procedure:\n1. Go to the countertop.\n2) take the potato"
    assert "> heat potato 1 with microwave 1" in prompts[0] and "Task: put a hot potato in sinkbasin." in prompts[0]
    with pytest.raises(ValueError, match="no numbered steps"):
        lm_script("put a hot potato in sinkbasin.", HEAT, lambda p: "I cannot help")


def test_memory_from_record_fields_and_errors():
    rec = {"game": "g/1", "task": "put a hot potato in sinkbasin.", "task_type": "pick_heat_then_place_in_recep",
           "actions": HEAT, "observations": [f"o{i}" for i in range(len(HEAT) + 1)], "won": True, "agent": "expert"}
    m = memory_from_record(rec)
    assert m.trajectory[0] == ["o0", HEAT[0]] and m.trajectory[-1] == [f"o{len(HEAT) - 1}", HEAT[-1]]
    assert m.provenance == {"game": "g/1", "agent": "expert", "builder": "rules-v1"}
    assert memory_from_record(rec).id == m.id and memory_from_record(rec, keep_trajectory=False).trajectory == []
    with pytest.raises(ValueError, match="not won"):
        memory_from_record({**rec, "won": False})
    with pytest.raises(ValueError, match="lacks 'actions'"):
        memory_from_record({k: v for k, v in rec.items() if k != "actions"})


def test_rule_script_leaves_out_detours():
    s = rule_script("put a hot potato in sinkbasin.", ["go to shelf 1", "take keychain 1 from shelf 1", "look",
                                                       "move keychain 1 to shelf 1", "help"] + HEAT)
    assert "keychain" not in s and "help" not in s and "(shelf, cabinet, countertop)" in s
