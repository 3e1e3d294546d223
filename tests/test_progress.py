"""Progress outside the Trainer: in a log or pipe, periodic lines and a last line with the time."""

from effnet.progress import ticks, track


def test_a_pipe_gets_periodic_lines_and_a_total(capsys):
    assert list(track(range(5), total=5, description="score", every_s=0.0)) == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().err.splitlines()
    assert lines[:5] == [f"score {n}/5" for n in range(1, 6)]
    assert lines[-1].startswith("score 5/5 in ") and lines[-1].endswith(" s")


def test_ticks_counts_the_steps_a_callback_reports(capsys):
    with ticks(3, "steps", every_s=0.0) as tick:
        for _ in range(3):
            tick()
        tick()  # one too many (a callback that fires once more) changes nothing
    lines = capsys.readouterr().err.splitlines()
    assert lines[:3] == [f"steps {n}/3" for n in range(1, 4)]
    assert lines[-1].startswith("steps 3/3 in ") and len(lines) == 4
