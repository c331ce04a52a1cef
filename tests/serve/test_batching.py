"""Concurrent requests on one model share backend calls: greedy ones with equal settings go together,
sampled ones alone, a withdrawn one is not generated for, and errors reach every request of a batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from codetune.config import load_config
from codetune.models.backends.base import Completion, Job, SamplingSettings, call_hooks
from codetune.serve import create_app, running_server
from codetune.serve.batching import Batcher, Cancelled
from tests.serve.test_server import FakeBackend

GREEDY = SamplingSettings(max_new_tokens=8)


class EchoBackend:
    """Answers each prompt with itself; the first call waits for `gate`. Records every call."""

    def __init__(self, fail: bool = False) -> None:
        self.gate, self.fail = threading.Event(), fail
        self.calls: list[list[str]] = []

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        self.calls.append(list(prompts))
        if len(self.calls) == 1:
            self.gate.wait(10)
        if self.fail:
            raise RuntimeError("backend broke")
        return [[Completion(p, "stop", 1, 1)] * settings.n for p in prompts]

    def stream(self, prompt: str, settings: SamplingSettings) -> Iterator[str]:
        yield prompt


def _start(
    batcher: Batcher, prompts: list[str], settings: SamplingSettings, out: dict[str, Any]
) -> threading.Thread:
    def run() -> None:
        try:
            out[prompts[0]] = batcher.generate(prompts, settings, out.get("cancel"))
        except Exception as e:
            out[prompts[0]] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _release(backend: Any, threads: list[threading.Thread]) -> None:
    """Let the held first batch go on, and wait for every request."""
    backend.gate.set()
    for t in threads:
        t.join(10)


def test_waiting_greedy_requests_share_one_call_and_each_gets_its_rows() -> None:
    backend, out = EchoBackend(), {}
    batcher = Batcher(backend)
    threads = [_start(batcher, ["a"], GREEDY, out)]
    _wait_for(lambda: backend.calls)  # "a" is generating; the next ones wait
    threads += [_start(batcher, [p, p + "2"], GREEDY, out) for p in ("b", "c", "d")]
    _wait_for(lambda: len(batcher._waiting) == 3)
    _release(backend, threads)
    assert backend.calls == [["a"], ["b", "b2", "c", "c2", "d", "d2"]]
    for p in "bcd":
        assert [row[0].text for row in out[p]] == [p, p + "2"]
    assert batcher.calls == 2 and batcher.batched_requests == 3


def test_sampled_or_differently_set_requests_are_not_combined() -> None:
    backend, out = EchoBackend(), {}
    batcher = Batcher(backend)
    threads = [_start(batcher, ["a"], GREEDY, out)]
    _wait_for(lambda: backend.calls)
    sampled = SamplingSettings(max_new_tokens=8, temperature=0.8, n=2, seed=1)
    threads += [_start(batcher, ["s1"], sampled, out), _start(batcher, ["s2"], sampled, out)]
    threads += [_start(batcher, ["long"], SamplingSettings(max_new_tokens=64), out)]
    _wait_for(lambda: len(batcher._waiting) == 3)
    _release(backend, threads)
    assert sorted(backend.calls[1:]) == [["long"], ["s1"], ["s2"]]
    assert len(out["s1"][0]) == 2


def test_a_withdrawn_request_is_not_generated_for() -> None:
    backend, out = EchoBackend(), {}
    batcher = Batcher(backend)
    first = _start(batcher, ["a"], GREEDY, out)
    _wait_for(lambda: backend.calls)
    left: dict[str, Any] = {"cancel": threading.Event()}
    gone = _start(batcher, ["gone"], GREEDY, left)
    stays = _start(batcher, ["stays"], GREEDY, out)
    _wait_for(lambda: len(batcher._waiting) == 2)
    left["cancel"].set()
    backend.gate.set()
    for t in (first, gone, stays):
        t.join(10)
    assert backend.calls == [["a"], ["stays"]]
    assert isinstance(left["gone"], Cancelled)


class StepBackend:
    """Decodes in steps until 200 are done or the call is withdrawn (`generate_hooks`), as the backends do."""

    def __init__(self) -> None:
        self.steps = 0

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        cancelled = call_hooks().cancelled
        for _ in range(200):
            if cancelled is not None and cancelled():
                raise Cancelled()
            self.steps += 1
            time.sleep(0.01)
        return [[Completion(p, "stop", 1, 1)] * settings.n for p in prompts]


def test_a_call_stops_once_every_client_of_it_has_left() -> None:
    backend, left = StepBackend(), {"cancel": threading.Event()}
    batcher = Batcher(backend)
    thread = _start(batcher, ["s"], SamplingSettings(temperature=0.8, n=2), left)
    _wait_for(lambda: backend.steps >= 5)
    left["cancel"].set()
    thread.join(10)
    assert isinstance(left["s"], Cancelled) and backend.steps < 100
    assert batcher.generate(["t"], GREEDY)[0][0].text == "t"  # the batcher serves on


def test_a_backend_error_reaches_every_request_of_the_batch() -> None:
    backend, out = EchoBackend(fail=True), {}
    batcher = Batcher(backend)
    threads = [_start(batcher, ["a"], GREEDY, out)]
    _wait_for(lambda: backend.calls)
    threads += [_start(batcher, [p], GREEDY, out) for p in ("b", "c")]
    _wait_for(lambda: len(batcher._waiting) == 2)
    _release(backend, threads)
    assert all(isinstance(out[p], RuntimeError) for p in "abc")
    assert len(backend.calls) == 2


def test_concurrent_http_requests_are_decoded_in_one_batch(tmp_path: Any) -> None:
    fake = FakeBackend()
    cfg = load_config(None, {"serve": {"max_concurrent": 8, "access_log": str(tmp_path / "log.jsonl")}})
    with running_server(create_app(cfg, backends={"slow": fake})) as url:

        def post(prompt: str) -> None:
            r = httpx.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4}, timeout=30)
            assert r.status_code == 200, r.text

        threads = [threading.Thread(target=post, args=(p,)) for p in ("first", "b", "c", "d")]
        threads[0].start()
        assert fake.started.wait(10)
        for t in threads[1:]:
            t.start()
        _wait_for(lambda: httpx.get(url + "/health").json()["running"] == 4)
        time.sleep(0.2)  # the three have reached the model's line
        fake.gate.set()
        for t in threads:
            t.join(30)
    assert fake.calls == 2  # "first" alone, then b, c and d together


class JoinBackend:
    """Continuous batching over a scripted model: prompt "name:k" takes k steps. Each step first asks
    `intake` for more work; a job whose prompt is longer than the batch's first prompts (and than 8
    characters) is handed back, as llama.cpp hands back what its KV streams can't hold. Step 1 waits for
    `gate`; step `hold[0]` waits for the event `hold[1]`; step `fail_at` raises."""

    def __init__(self, hold: tuple[int, threading.Event] | None = None, fail_at: int = 0) -> None:
        self.gate, self.hold, self.fail_at = threading.Event(), hold, fail_at
        self.batches: list[list[str]] = []
        self.held = False  # the event `hold` waits for was set in time
        self.at_gate = threading.Event()  # step 1 reached: the first intake is over, later requests join

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        self.batches.append([f"generate {p}" for p in prompts])
        return [[Completion(p, "stop", 1, 1)] * settings.n for p in prompts]

    def decode_joined(self, first: Sequence[Job], intake: Any) -> None:
        names: list[str] = []
        self.batches.append(names)
        room = max(8, *(len(p) for job in first for p in job.prompts))
        running: dict[Job, int] = {}
        step = 0

        def add(job: Job) -> None:
            if max(len(p) for p in job.prompts) > room:
                job.done(job)  # neither rows nor error: offered again later
                return
            names.extend(job.prompts)
            running[job] = max(int(p.split(":")[1]) for p in job.prompts)

        for job in first:
            add(job)
        while True:
            for job in intake(4):
                add(job)
            if not running:
                return
            step += 1
            if step == 1:
                self.at_gate.set()
                self.gate.wait(10)
            if self.hold is not None and step == self.hold[0]:
                self.held = self.hold[1].wait(10)
            if step == self.fail_at:
                raise RuntimeError("backend broke")
            for job in list(running):
                if job.cancelled is not None and job.cancelled():
                    del running[job]
                    job.error = Cancelled()
                    job.done(job)
                    continue
                running[job] -= 1
                if job.emit is not None:
                    job.emit(0, 0, f"{job.prompts[0]}@{step};")
                if not running[job]:
                    del running[job]
                    job.rows = [[Completion(p, "stop", 1, 1)] * job.settings.n for p in job.prompts]
                    job.done(job)


def test_a_request_joins_a_running_batch_and_is_answered_before_the_batch_ends() -> None:
    b_answered = threading.Event()
    backend, out = JoinBackend(hold=(4, b_answered)), {}
    batcher = Batcher(backend)
    threads = [_start(batcher, ["a:6"], GREEDY, out)]
    _wait_for(backend.at_gate.is_set)  # "a" is decoding (held at step 1)
    late = SamplingSettings(max_new_tokens=3, stop=("x",))  # other settings may join too
    threads.append(
        threading.Thread(target=lambda: (_start(batcher, ["b:2"], late, out).join(), b_answered.set()))
    )
    threads[-1].start()
    _wait_for(lambda: len(batcher._waiting) == 1)
    _release(backend, threads)
    # "b" joined at step 2, ended at step 3, and its client had its answer while "a" was still decoding
    assert backend.held and backend.batches == [["a:6", "b:2"]]
    assert [row[0].text for row in out["b:2"]] == ["b:2"] and out["a:6"][0][0].text == "a:6"
    assert batcher.calls == 1 and batcher.batched_requests == 2


def test_a_request_too_long_to_join_leads_the_next_batch_and_sampled_ones_run_alone() -> None:
    backend, out = JoinBackend(), {}
    batcher = Batcher(backend)
    threads = [_start(batcher, ["a:3"], GREEDY, out)]
    _wait_for(backend.at_gate.is_set)
    threads.append(_start(batcher, ["a-much-longer-prompt:1"], GREEDY, out))
    _wait_for(lambda: len(batcher._waiting) == 1)
    threads.append(_start(batcher, ["s:1"], SamplingSettings(temperature=0.8, n=2), out))
    _wait_for(lambda: len(batcher._waiting) == 2)
    _release(backend, threads)
    assert backend.batches[0] == ["a:3"]
    assert sorted(backend.batches[1:]) == [["a-much-longer-prompt:1"], ["generate s:1"]]
    assert out["a-much-longer-prompt:1"][0][0].text == "a-much-longer-prompt:1" and len(out["s:1"][0]) == 2


def test_a_backend_error_in_a_running_batch_reaches_the_requests_decoding() -> None:
    backend, out = JoinBackend(fail_at=3), {}
    batcher = Batcher(backend)
    threads = [_start(batcher, ["a:5"], GREEDY, out)]
    _wait_for(backend.at_gate.is_set)
    threads.append(_start(batcher, ["b:5"], GREEDY, out))
    _wait_for(lambda: len(batcher._waiting) == 1)
    _release(backend, threads)
    assert backend.batches == [["a:5", "b:5"]]
    assert isinstance(out["a:5"], RuntimeError) and isinstance(out["b:5"], RuntimeError)


def test_a_waiting_request_that_cannot_join_stops_the_joining_and_goes_next() -> None:
    # A sampled request must not wait behind a batch that greedy arrivals keep alive: once it waits,
    # the running batch takes no one else, and requests are then served in arrival order.
    backend, out = JoinBackend(), {}
    batcher = Batcher(backend)
    threads = [_start(batcher, ["a:6"], GREEDY, out)]
    _wait_for(backend.at_gate.is_set)
    threads.append(_start(batcher, ["s:1"], SamplingSettings(temperature=0.8, n=2), out))
    _wait_for(lambda: len(batcher._waiting) == 1)
    threads.append(_start(batcher, ["c:1"], GREEDY, out))
    _wait_for(lambda: len(batcher._waiting) == 2)
    _release(backend, threads)
    assert backend.batches == [["a:6"], ["generate s:1"], ["c:1"]]
    assert all(not isinstance(v, Exception) for v in out.values())


def test_a_withdrawn_request_that_could_not_join_no_longer_stops_the_joining() -> None:
    # A sampled request whose client left while it waited is answered Cancelled at once, and greedy
    # arrivals join the running batch again instead of waiting for it to drain.
    backend, out = JoinBackend(), {}
    left: dict[str, Any] = {"cancel": threading.Event()}
    batcher = Batcher(backend)
    threads = [_start(batcher, ["a:6"], GREEDY, out)]
    _wait_for(backend.at_gate.is_set)
    threads.append(_start(batcher, ["s:1"], SamplingSettings(temperature=0.8, n=2), left))
    _wait_for(lambda: len(batcher._waiting) == 1)
    left["cancel"].set()
    threads.append(_start(batcher, ["c:1"], GREEDY, out))
    _wait_for(lambda: len(batcher._waiting) == 2)
    _release(backend, threads)
    assert backend.batches == [["a:6", "c:1"]]
    assert isinstance(left["s:1"], Cancelled) and out["c:1"][0][0].text == "c:1"


def test_the_first_request_of_a_batch_is_answered_when_it_ends_not_when_the_batch_does() -> None:
    # The batch runs on the batcher's own thread: a request that started it is not held until the
    # requests that joined later have ended too.
    a_answered = threading.Event()
    backend, out = JoinBackend(hold=(4, a_answered)), {}
    batcher = Batcher(backend)
    first = threading.Thread(target=lambda: (_start(batcher, ["a:2"], GREEDY, out).join(), a_answered.set()))
    first.start()
    _wait_for(backend.at_gate.is_set)
    late = _start(batcher, ["b:6"], GREEDY, out)
    _wait_for(lambda: len(batcher._waiting) == 1)
    backend.gate.set()
    for t in (first, late):
        t.join(10)
    assert backend.held and backend.batches == [["a:2", "b:6"]]
    assert out["a:2"][0][0].text == "a:2" and out["b:6"][0][0].text == "b:6"


def test_a_request_withdrawn_while_it_decodes_leaves_the_batch() -> None:
    backend = JoinBackend(hold=(3, threading.Event()))
    out: dict[str, Any] = {}
    left: dict[str, Any] = {"cancel": threading.Event()}
    batcher = Batcher(backend)
    stays = _start(batcher, ["a:5"], GREEDY, out)
    _wait_for(backend.at_gate.is_set)
    gone = _start(batcher, ["b:9"], GREEDY, left)
    _wait_for(lambda: len(batcher._waiting) == 1)
    backend.gate.set()
    _wait_for(lambda: backend.batches[0] == ["a:5", "b:9"])
    left["cancel"].set()  # the client of "b" leaves while it decodes (step 3 waits on an unset event)
    assert backend.hold is not None
    backend.hold[1].set()
    for t in (stays, gone):
        t.join(10)
    assert isinstance(left["b:9"], Cancelled) and out["a:5"][0][0].text == "a:5"


def test_a_greedy_stream_joins_the_running_batch_and_closing_it_withdraws_it() -> None:
    backend = JoinBackend()
    out: dict[str, Any] = {}
    batcher = Batcher(backend)
    first = _start(batcher, ["a:6"], GREEDY, out)
    _wait_for(backend.at_gate.is_set)
    streamed: list[str] = []
    reader = threading.Thread(target=lambda: streamed.extend(batcher.stream("b:3", GREEDY)))
    reader.start()
    _wait_for(lambda: len(batcher._waiting) == 1)
    leaver = batcher.stream("c:9", GREEDY)
    taken: list[str] = []
    closer = threading.Thread(target=lambda: (taken.append(next(leaver)), leaver.close()))
    closer.start()
    _wait_for(lambda: len(batcher._waiting) == 2)
    _release(backend, [first, reader, closer])
    # both streams joined at step 2; "b" streamed a piece per step; "c" left after its first piece
    assert backend.batches == [["a:6", "b:3", "c:9"]]
    assert streamed == ["b:3@2;", "b:3@3;", "b:3@4;"] and taken == ["c:9@2;"]
    assert out["a:6"][0][0].text == "a:6"
    sampled = SamplingSettings(temperature=0.5)
    assert list(Batcher(EchoBackend()).stream("s", sampled)) == ["s"]  # not joined: the backend's stream
