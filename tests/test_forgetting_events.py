"""ForgettingTracker: hand-written sequences, a slow reference, persistence, bad input."""

import random

import pytest
import torch

from forgetting_sam.forgetting import ForgettingTracker


def feed(tracker, steps):
    """steps: list of (indices, correct) pairs."""
    for idx, c in steps:
        tracker.update_correct(torch.tensor(idx), torch.tensor(c, dtype=torch.bool))


def test_hand_written_sequences():
    t = ForgettingTracker(6)
    # ex 0: 0 1 1 0 1 0 -> learn at step 1 and 4, forget at 3 and 5
    # ex 1: never learned, presented 6 times -> counts as forgotten 6 times
    # ex 2: always correct -> learn at step 0, unforgettable
    # ex 3: presented at steps 0 and 3 only: 1 then 0 -> one forget across the gap
    # ex 4: never presented
    # ex 5: presented only at step 2, correct -> learned then, unforgettable
    seq = {0: [0, 1, 1, 0, 1, 0], 1: [0] * 6, 2: [1] * 6}
    for s in range(6):
        idx = [0, 1, 2] + ([3] if s in (0, 3) else []) + ([5] if s == 2 else [])
        c = [seq[0][s], seq[1][s], seq[2][s]] + ([1 if s == 0 else 0] if s in (0, 3) else []) \
            + ([1] if s == 2 else [])
        feed(t, [(idx, c)])

    assert t.learn_events.tolist() == [2, 0, 1, 1, 0, 1]
    assert t.forget_events.tolist() == [2, 0, 0, 1, 0, 0]
    assert t.presentations.tolist() == [6, 6, 6, 2, 0, 1]
    assert t.correct_count.tolist() == [3, 0, 6, 1, 0, 1]
    assert t.first_learned_step.tolist() == [1, -1, 0, 0, -1, 2]
    assert t.ever_learned.tolist() == [True, False, True, True, False, True]
    assert t.forgetting_counts().tolist() == [2, 6, 0, 1, 0, 0]
    assert t.unforgettable().tolist() == [2, 5]
    assert t.never_learned().tolist() == [1]
    # presented examples only: counts {2, 6, 0, 1, 0} -> h[0]=2, h[1]=1, h[2]=1, h[6]=1
    assert t.histogram().tolist() == [2, 1, 1, 0, 0, 0, 1]
    assert t.most_forgotten(3).tolist() == [1, 0, 3]
    s = t.summary()
    assert s["presented"] == 5 and s["never_learned"] == 1 and s["unforgettable"] == 2
    assert s["forget_events"] == 3 and s["learn_events"] == 5 and s["updates"] == 6
    assert s["mean_forgetting_count"] == pytest.approx(9 / 5)
    h = t.history()
    assert h["forgotten"].tolist() == [0, 0, 0, 2, 0, 1]
    assert h["presented"].tolist() == [4, 3, 4, 4, 3, 3]


def test_repeated_presentations_in_one_batch_are_consecutive():
    t = ForgettingTracker(3)
    feed(t, [([2, 0, 2, 2], [1, 1, 0, 1])])
    assert t.learn_events.tolist() == [1, 0, 2]
    assert t.forget_events.tolist() == [0, 0, 1]
    assert t.presentations.tolist() == [1, 0, 3]
    assert t.last_correct.tolist() == [1, -1, 1]
    assert t.history()["forgotten"].tolist() == [1]


def test_update_from_logits_and_soft_targets():
    t = ForgettingTracker(4)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    t.update(torch.tensor([0, 1, 3]), logits, torch.tensor([0, 0, 0]))
    assert t.last_correct.tolist() == [1, 0, -1, 1]
    soft = torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.9, 0.1]])
    t.update(torch.tensor([0, 1, 3]), logits, soft)  # argmax targets 1, 1, 0
    assert t.forget_events.tolist() == [1, 0, 0, 0]
    assert t.learn_events.tolist() == [1, 1, 0, 1]
    t.update([0], logits[:1], torch.tensor([0]), step=100)
    assert t.first_learned_step.tolist() == [0, 1, -1, 0]


def reference(n, updates):
    """Slow per-example Python reference of the conventions in events.py."""
    last = [None] * n
    learn, forget, pres, first, right = [0] * n, [0] * n, [0] * n, [-1] * n, [0] * n
    for step, (idx, c) in enumerate(updates):
        for i, ci in zip(idx, c):
            if ci and last[i] != 1:
                learn[i] += 1
            if not ci and last[i] == 1:
                forget[i] += 1
            if ci and first[i] < 0:
                first[i] = step
            pres[i] += 1
            right[i] += bool(ci)
            last[i] = 1 if ci else 0
    counts = [forget[i] if first[i] >= 0 else pres[i] for i in range(n)]
    return learn, forget, pres, first, counts, right


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference_on_random_sequences(seed):
    rng = random.Random(seed)
    n = 40
    updates = []
    for _ in range(30):
        b = rng.randint(1, 25)
        idx = [rng.randrange(n) for _ in range(b)]  # with replacement: repeats happen
        c = [rng.random() < 0.6 for _ in range(b)]
        updates.append((idx, c))
    t = ForgettingTracker(n)
    feed(t, updates)
    learn, forget, pres, first, counts, right = reference(n, updates)
    assert t.correct_count.tolist() == right
    assert t.learn_events.tolist() == learn
    assert t.forget_events.tolist() == forget
    assert t.presentations.tolist() == pres
    assert t.first_learned_step.tolist() == first
    assert t.forgetting_counts().tolist() == counts
    unf = [i for i in range(n) if first[i] >= 0 and forget[i] == 0]
    assert t.unforgettable().tolist() == unf
    hist = [0] * (max(c for c, p in zip(counts, pres) if p) + 1)
    for c, p in zip(counts, pres):
        if p:
            hist[c] += 1
    assert t.histogram().tolist() == hist
    h = t.history()
    assert int(h["forgotten"].sum()) == sum(forget) and int(h["learned"].sum()) == sum(learn)
    assert h["presented"].tolist() == [len(i) for i, _ in updates]
    assert h["correct"].tolist() == [sum(c) for _, c in updates]


def test_state_dict_round_trip_and_resume(tmp_path):
    rng = random.Random(5)
    ups = [([rng.randrange(20) for _ in range(8)], [rng.random() < 0.5 for _ in range(8)])
           for _ in range(12)]
    full = ForgettingTracker(20)
    feed(full, ups)
    half = ForgettingTracker(20)
    feed(half, ups[:6])
    path = tmp_path / "tracker.pt"
    half.save(path)
    torch.load(path, weights_only=True)  # plain tensors and ints only
    resumed = ForgettingTracker.load(path)
    feed(resumed, ups[6:])
    for a, b in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert a[0] == b[0]
        if isinstance(a[1], torch.Tensor):
            assert torch.equal(a[1], b[1]), a[0]
        else:
            assert a[1] == b[1]
    assert full.summary() == resumed.summary()


def test_bad_input():
    t = ForgettingTracker(5)
    with pytest.raises(ValueError, match="num_examples"):
        ForgettingTracker(0)
    with pytest.raises(ValueError, match="out of range"):
        t.update_correct(torch.tensor([0, 5]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="out of range"):
        t.update_correct(torch.tensor([-1]), torch.tensor([True]))
    with pytest.raises(ValueError, match="correct must have shape"):
        t.update_correct(torch.tensor([0, 1]), torch.tensor([True]))
    with pytest.raises(ValueError, match="targets must have shape"):
        t.update(torch.tensor([0, 1]), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="indices has 3 entries but logits 2 rows"):
        t.update(torch.tensor([0, 1, 2]), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="logits must be"):
        t.update(torch.tensor([0]), torch.zeros(3), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        t.update_correct(torch.tensor([0.0]), torch.tensor([True]))
    with pytest.raises(ValueError, match="1-D"):
        t.update_correct(torch.tensor([[0]]), torch.tensor([True]))
    with pytest.raises(ValueError, match="empty"):
        t.update_correct(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.bool))
    with pytest.raises(ValueError, match="bool or integer"):
        t.update_correct(torch.tensor([0]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="for 5 examples"):
        ForgettingTracker(6).load_state_dict(t.state_dict())
    with pytest.raises(KeyError, match="missing"):
        t.load_state_dict({"num_examples": 5})
    assert t.step == 0 and int(t.presentations.sum()) == 0  # nothing half-applied
