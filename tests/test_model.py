"""A stateful model test of a task's lifecycle: hypothesis drives create, batch
create, claim (single, batch, concurrent), heartbeat, nack, abandon, result, cancel,
lease expiry and an operator's requeue / fail against a real daemon over HTTP, and checks every answer and the
queue counts against a model; at the end every task is where the model says (no
task lost), no task was ever leased twice, and every ended task ended exactly once.

The state machine is synchronous: it runs in a worker thread with a blocking HTTP
client while the daemon serves on the test's event loop. A failing run is reported
unshrunk (its steps and a @reproduce_failure blob): shrinking would replay real
lease expiries for minutes."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import TOKENS
from figures import report
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

TASKS = "/v1/codeq/tasks"
WORKERS = {"worker": "worker-1", "worker2": "worker-2"}
LONG_LEASE = 300  # seconds: no lease ends during a run unless the model makes it
NACK_DELAY_CAP = 600  # the daemon's backoffMaxSeconds here: a nack delay above it is capped
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
TERMINAL_EVENTS = {"completed", "failed", "failed_by_admin", "dead_lettered", "cancelled"}
EXPIRIES_PER_RUN = 1  # each costs a real lease of 1 s: the run's time budget
EXAMPLES, STEPS = 20, 50


# ------------------------------------------------------------ a blocking client


class SyncApi:
    """Blocking HTTP calls to a daemon as a named test identity (for the state
    machine's thread); a connection per call, so no idle keep-alive can go stale."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        assert parts.hostname and parts.port
        self.host, self.port = parts.hostname, parts.port
        self.requests = 0
        self._lock = threading.Lock()

    def call(
        self,
        method: str,
        path: str,
        who: str | None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, JSON body or None)."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if who:
            all_headers["Authorization"] = f"Bearer {TOKENS[who][0]}"
        data = json.dumps(body).encode() if body is not None else None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=all_headers)
            resp = conn.getresponse()
            text = resp.read()
        finally:
            conn.close()
        with self._lock:
            self.requests += 1
        return resp.status, json.loads(text) if text else None


def epoch_ms(rfc3339: str) -> int:
    return round(datetime.fromisoformat(rfc3339).timestamp() * 1000)


# ------------------------------------------------------------ the model


@dataclass
class TaskModel:
    """What the model knows of one task."""

    id: str
    n: int  # its payload is {"n": n}
    priority: int
    max_attempts: int
    status: str = "PENDING"
    delayed: bool = False  # PENDING but not ready (a far runAt or a long nack delay)
    attempts: int = 0
    owner: str | None = None
    token: str | None = None
    old_tokens: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    dead_lettered: bool = False
    error: str | None = None


@dataclass
class Figures:
    """What the runs did, for the terminal summary."""

    examples: int = 0
    steps: int = 0
    requests: int = 0
    tasks: int = 0
    claims: int = 0
    expiries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


def lease_problem(task: TaskModel, worker: str, token: str | None) -> tuple[int, str] | None:
    """The answer of a lease check, as the daemon rules it: status first, then a
    presented token, then the owner; None when the caller holds the lease."""
    if task.status != "IN_PROGRESS":
        return 409, f"task is {task.status}"
    if token is not None and token != task.token:
        return 409, "stale"
    if worker != task.owner:
        return 403, "another worker"
    return None


class LifecycleModel(RuleBasedStateMachine):
    """One command (unique per run) of tenant acme, its tasks and their ready order."""

    api: SyncApi
    figures: Figures
    runs = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.command = f"model-{next(self.runs)}"  # a queue of its own
        self.tasks: dict[str, TaskModel] = {}
        self.ready: dict[int, list[str]] = {tier: [] for tier in range(10)}  # [0] is next
        self.keys: dict[str, str] = {}  # idempotency key -> task id
        self.tokens_seen: set[str] = set()
        self.leased: set[str] = set()  # ids held under a lease right now
        self.expiries = 0
        self.figures.examples += 1

    # ---------------------------------------------------------------- helpers

    def order(self) -> list[str]:
        """The ready tasks in the order claims must hand them out."""
        return [task_id for tier in range(9, -1, -1) for task_id in self.ready[tier]]

    def held(self) -> list[str]:
        """The leased tasks, in creation order: the machine's choices must not depend
        on the ids the daemon mints, or hypothesis could not replay them."""
        return [task_id for task_id in self.tasks if task_id in self.leased]

    def leased_to_take(self, task_id: str, body: dict[str, Any]) -> None:
        """Applies a claim's answer to the model: the task was next in line, is not
        leased already, and gets a token never seen before."""
        task = self.tasks[task_id]
        assert task_id not in self.leased, f"{task_id} leased twice"
        assert task.status == "PENDING" and not task.delayed, (task, body)
        self.ready[task.priority].remove(task_id)
        task.status, task.attempts = "IN_PROGRESS", task.attempts + 1
        token = body["leaseToken"]
        assert token not in self.tokens_seen, f"lease token {token} handed out twice"
        self.tokens_seen.add(token)
        task.owner, task.token = body["workerId"], token
        self.leased.add(task_id)
        self.figures.claims += 1
        assert body["status"] == "IN_PROGRESS", body
        assert body["attempts"] == task.attempts, (body, task)
        assert json.loads(body["payload"]) == {"n": task.n}, body

    def released(self, task: TaskModel) -> None:
        """The task's lease ended (requeue, terminal or cancel)."""
        self.leased.discard(task.id)
        if task.token:
            task.old_tokens.append(task.token)
        task.owner, task.token = None, None

    def requeued(self, task: TaskModel, front: bool = False, delayed: bool = False) -> None:
        self.released(task)
        task.status, task.delayed = "PENDING", delayed
        if delayed:
            return
        if front:
            self.ready[task.priority].insert(0, task.id)
        else:
            self.ready[task.priority].append(task.id)

    def ended(self, task: TaskModel, status: str, error: str | None = None) -> None:
        if task.status == "PENDING" and not task.delayed:
            self.ready[task.priority].remove(task.id)
        self.released(task)
        task.status, task.delayed, task.error = status, False, error

    def dead_lettered(self, task: TaskModel) -> None:
        self.ended(task, "FAILED", "MAX_ATTEMPTS")
        task.dead_lettered = True

    def pick(self, data: st.DataObject, leased_first: bool = True) -> TaskModel:
        """A task to act on: mostly a leased one, when there is one."""
        pool = self.held() if leased_first else []
        if not pool or data.draw(st.integers(0, 3), label="any task") == 0:
            pool = list(self.tasks)
        return self.tasks[data.draw(st.sampled_from(pool), label="task")]

    def proof(self, data: st.DataObject, task: TaskModel) -> tuple[str, str | None, dict[str, Any]]:
        """Who acts, with which lease token (current, stale or none) and where it is
        presented: (identity, token or None, request extras)."""
        if task.owner:  # owner or not, whichever worker won the claim
            owner = next(name for name, wid in WORKERS.items() if wid == task.owner)
            other = next(name for name in WORKERS if name != owner)
            who = owner if data.draw(st.integers(0, 3), label="as owner") > 0 else other
        else:
            who = data.draw(st.sampled_from(sorted(WORKERS)), label="who")
        choices = ["none"] + (["current"] * 2 if task.token else [])
        choices += ["stale"] if task.old_tokens else []
        kind = data.draw(st.sampled_from(choices), label="token")
        token = {
            "none": None,
            "current": task.token,
            "stale": task.old_tokens[-1] if task.old_tokens else None,
        }[kind]
        if token is None:
            return who, None, {}
        if data.draw(st.booleans(), label="token in header"):
            return who, token, {"headers": {"X-Lease-Token": token}}
        return who, token, {"leaseToken": token}

    def act(
        self, task: TaskModel, action: str, who: str, extras: dict[str, Any], **body: Any
    ) -> Any:
        headers = extras.get("headers")
        if "leaseToken" in extras:
            body["leaseToken"] = extras["leaseToken"]
        return self.api.call("POST", f"{TASKS}/{task.id}/{action}", who, body, headers)

    def saw(self, outcome: str) -> None:
        self.figures.outcomes[outcome] += 1

    def assert_refused(
        self, action: str, answer: tuple[int, Any], problem: tuple[int, str]
    ) -> None:
        self.saw(f"{action} refused {problem[0]} {problem[1]}")
        status, body = answer
        assert status == problem[0], (answer, problem)
        assert problem[1].lower() in body["error"].lower(), (answer, problem)

    def created(self, task: TaskModel, body: dict[str, Any]) -> None:
        assert body["status"] == "PENDING" and body["attempts"] == 0, body
        assert (body["priority"], body["maxAttempts"]) == (task.priority, task.max_attempts)
        self.tasks[task.id] = task
        self.figures.tasks += 1
        if not task.delayed:
            self.ready[task.priority].append(task.id)

    def new_task(self, task_id: str, priority: int, max_attempts: int, delayed: bool) -> TaskModel:
        return TaskModel(
            task_id, len(self.tasks), max(0, min(9, priority)), max_attempts, delayed=delayed
        )

    # ---------------------------------------------------------------- rules

    @rule(
        priority=st.integers(-2, 11),
        max_attempts=st.integers(1, 3),
        delayed=st.booleans(),
        key=st.none() | st.sampled_from(["k1", "k2"]),
    )
    def create(self, priority: int, max_attempts: int, delayed: bool, key: str | None) -> None:
        body: dict[str, Any] = {
            "command": self.command,
            "payload": {"n": len(self.tasks)},
            "priority": priority,
            "maxAttempts": max_attempts,
        }
        if delayed:
            body["delaySeconds"] = 3600
        if key is not None:
            body["idempotencyKey"] = f"{self.command}-{key}"
        status, answer = self.api.call("POST", TASKS, "producer", body)
        assert status == 202, answer
        if key is not None and key in self.keys:
            assert answer["id"] == self.keys[key], "an idempotent create made a second task"
            self.saw("create idempotent replay")
            return
        assert answer["id"] not in self.tasks, answer
        self.created(self.new_task(answer["id"], priority, max_attempts, delayed), answer)
        if key is not None:
            self.keys[key] = answer["id"]

    @rule(shapes=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 3)), min_size=1, max_size=4))
    def create_batch(self, shapes: list[tuple[int, int]]) -> None:
        items = [
            {
                "command": self.command,
                "payload": {"n": len(self.tasks) + i},
                "priority": priority,
                "maxAttempts": max_attempts,
            }
            for i, (priority, max_attempts) in enumerate(shapes)
        ]
        status, answer = self.api.call("POST", f"{TASKS}/batch", "producer", {"tasks": items})
        assert status == 200, answer
        assert len(answer["results"]) == len(items), answer
        for (priority, max_attempts), item in zip(shapes, answer["results"], strict=True):
            assert "task" in item, item
            task = self.new_task(item["task"]["id"], priority, max_attempts, False)
            self.created(task, item["task"])

    @rule(who=st.sampled_from(sorted(WORKERS)))
    def claim(self, who: str) -> None:
        body = {"commands": [self.command], "leaseSeconds": LONG_LEASE}
        status, answer = self.api.call("POST", f"{TASKS}/claim", who, body)
        order = self.order()
        if not order:
            assert status == 204, answer
            return
        assert status == 200, answer
        assert answer["id"] == order[0], f"claimed {answer['id']}, next in line was {order[0]}"
        assert answer["workerId"] == WORKERS[who], answer
        self.leased_to_take(answer["id"], answer)

    @rule(count=st.integers(1, 6))
    def claim_batch(self, count: int) -> None:
        body = {"commands": [self.command], "leaseSeconds": LONG_LEASE, "count": count}
        status, answer = self.api.call("POST", f"{TASKS}/claim/batch", "worker", body)
        expected = self.order()[:count]
        if not expected:
            assert status == 204, answer
            return
        assert status == 200, answer
        assert [t["id"] for t in answer["tasks"]] == expected
        for task in answer["tasks"]:
            self.leased_to_take(task["id"], task)

    @rule(claims=st.integers(2, 8))
    def claim_concurrently(self, claims: int) -> None:
        """Parallel claims get distinct tasks: the first ones in line, one each."""
        body = {"commands": [self.command], "leaseSeconds": LONG_LEASE}
        who = [sorted(WORKERS)[i % 2] for i in range(claims)]
        with ThreadPoolExecutor(claims) as pool:
            answers = list(
                pool.map(lambda w: self.api.call("POST", f"{TASKS}/claim", w, body), who)
            )
        expected = self.order()[:claims]
        got = [answer for status, answer in answers if status == 200]
        assert all(status in (200, 204) for status, _ in answers), answers
        ids = [answer["id"] for answer in got]
        assert len(set(ids)) == len(ids), f"one task leased to two claims: {ids}"
        assert set(ids) == set(expected), (ids, expected)
        for task_id in expected:  # the model takes them in line order
            self.leased_to_take(task_id, next(a for a in got if a["id"] == task_id))

    def worker_action(
        self, data: st.DataObject, action: str, **body: Any
    ) -> tuple[TaskModel, Any] | None:
        """POSTs a worker action on a drawn task as a drawn caller. Returns the task and
        the 200 answer when the caller holds the lease; else checks the refusal the
        model predicts and returns None."""
        task = self.pick(data)
        who, token, extras = self.proof(data, task)
        answer = self.act(task, action, who, extras, **body)
        problem = lease_problem(task, WORKERS[who], token)
        if problem is None and task.cancel_requested and action in ("heartbeat", "result"):
            problem = (409, "task was cancelled")  # nack and abandon end it instead
        if problem:
            self.assert_refused(action, answer, problem)
            return None
        assert answer[0] == 200, answer
        return task, answer[1]

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        if self.worker_action(data, "heartbeat", extendSeconds=LONG_LEASE):
            self.saw("heartbeat extended")

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), delay=st.sampled_from([None, 0, 3600]))
    def nack(self, data: st.DataObject, delay: int | None) -> None:
        fields = {} if delay is None else {"delaySeconds": delay}
        if not (done := self.worker_action(data, "nack", reason="model", **fields)):
            return
        task, body = done
        if task.cancel_requested:
            assert body == {"status": "cancelled"}, body
            self.saw("nack cancelled")
            self.ended(task, "CANCELLED")
        elif task.attempts >= task.max_attempts:
            assert body["status"] == "dlq", body
            self.saw("nack dead-lettered")
            self.dead_lettered(task)
        else:
            applied = min(delay or 0, NACK_DELAY_CAP)
            assert body == {"status": "requeued", "delaySeconds": applied}, body
            self.saw(f"nack requeued +{applied}s")
            self.requeued(task, delayed=applied > 0)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        if not (done := self.worker_action(data, "abandon")):
            return
        task, body = done
        if task.cancel_requested:
            assert body == {"status": "cancelled"}, body
            self.saw("abandon cancelled")
            self.ended(task, "CANCELLED")
        else:
            assert body == {"status": "requeued"}, body
            self.saw("abandon requeued")
            self.requeued(task, front=True)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), failed=st.booleans())
    def result(self, data: st.DataObject, failed: bool) -> None:
        ending, error = ("FAILED", "model says no") if failed else ("COMPLETED", None)
        outcome = {"error": error} if failed else {"result": {"model": True}}
        if not (done := self.worker_action(data, "result", status=ending, **outcome)):
            return
        task, body = done
        assert body["status"] == ending, body
        self.saw(f"result {ending}")
        self.ended(task, ending, error)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def admin_requeue(self, data: st.DataObject) -> None:
        """An operator ends a lease now: back next in line (attempts kept), or
        CANCELLED when its cancel was requested; a task not in progress is a 409."""
        task = self.pick(data)
        status, body = self.api.call(
            "POST", f"/v1/codeq/admin/tasks/{task.id}/requeue", "admin", {}
        )
        if task.status != "IN_PROGRESS":
            assert status == 409, (status, body, task)
            self.saw(f"admin requeue refused 409 task is {task.status}")
        elif task.cancel_requested:
            assert (status, body["status"]) == (200, "cancelled"), body
            self.saw("admin requeue cancelled")
            self.ended(task, "CANCELLED")
        else:
            assert (status, body["status"]) == (200, "requeued"), body
            self.saw("admin requeue")
            self.requeued(task, front=True)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def admin_fail(self, data: st.DataObject) -> None:
        """An operator fails a task in progress now (its cancel request or not)."""
        task = self.pick(data)
        path = f"/v1/codeq/admin/tasks/{task.id}/fail"
        status, body = self.api.call("POST", path, "admin", {"reason": "model"})
        if task.status != "IN_PROGRESS":
            assert status == 409, (status, body, task)
            self.saw(f"admin fail refused 409 task is {task.status}")
            return
        assert (status, body["status"]) == (200, "failed"), body
        self.saw("admin fail")
        self.ended(task, "FAILED", "failed by admin: model")

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), tenant=st.sampled_from(["producer"] * 4 + ["producer_globex"]))
    def cancel(self, data: st.DataObject, tenant: str) -> None:
        task = self.pick(data, leased_first=False)
        status, body = self.api.call("POST", f"{TASKS}/{task.id}/cancel", tenant, {})
        if tenant == "producer_globex":
            assert status == 404, (status, body)  # another tenant's task: unseen, untouched
            self.saw("cancel 404 other tenant")
        elif task.status in TERMINAL:
            assert (status, body["status"]) == (409, task.status), body
            self.saw("cancel 409 ended")
        elif task.status == "IN_PROGRESS":
            assert (status, body["status"]) == (202, "cancel_requested"), body
            self.saw("cancel requested")
            task.cancel_requested = True
        else:
            assert (status, body["status"]) == (200, "CANCELLED"), body
            self.saw("cancel delayed" if task.delayed else "cancel ready")
            self.ended(task, "CANCELLED")

    @precondition(
        lambda self: (
            self.expiries < EXPIRIES_PER_RUN
            and any(not self.tasks[i].cancel_requested for i in self.leased)
        )
    )
    @rule(data=st.data())
    def leases_expire(self, data: st.DataObject) -> None:
        """Some holders go silent: each lease is shortened to 1 s by a heartbeat (some
        are also asked to cancel), and the reaper retries, dead-letters or cancels them
        in lease-end order."""
        self.expiries += 1
        self.figures.expiries += 1
        candidates = [i for i in self.held() if not self.tasks[i].cancel_requested]
        chosen = data.draw(
            st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True),
            label="expiring",
        )
        ends: dict[str, int] = {}
        for task_id in chosen:
            task = self.tasks[task_id]
            who = next(name for name, wid in WORKERS.items() if wid == task.owner)
            ends[task_id] = self.shorten_lease(task, who, after=max(ends.values(), default=0))
            if data.draw(st.booleans(), label="cancel too"):
                status, body = self.api.call("POST", f"{TASKS}/{task_id}/cancel", "producer", {})
                assert status == 202, body
                task.cancel_requested = True
        deadline = time.monotonic() + 10
        waiting = set(chosen)
        while waiting:
            for task_id in sorted(waiting):
                status, body = self.api.call("GET", f"{TASKS}/{task_id}", "producer")
                assert status == 200, body
                if body["status"] != "IN_PROGRESS":
                    waiting.discard(task_id)
            assert time.monotonic() < deadline, f"leases of {sorted(waiting)} never reaped"
            if waiting:
                time.sleep(0.05)
        for task_id in sorted(chosen, key=lambda i: (ends[i], i)):
            task = self.tasks[task_id]
            if task.cancel_requested:
                self.saw("expiry cancelled")
                self.ended(task, "CANCELLED")
            elif task.attempts >= task.max_attempts:
                self.saw("expiry dead-lettered")
                self.dead_lettered(task)
            else:
                self.saw("expiry requeued")
                self.requeued(task)

    def shorten_lease(self, task: TaskModel, who: str, after: int) -> int:
        """Heartbeats the lease down to 1 s, ending strictly after `after` (ms), so the
        reaper's order is the order of the heartbeats; returns the lease end."""
        deadline = time.monotonic() + 5
        while True:
            status, body = self.act(
                task, "heartbeat", who, {"leaseToken": task.token}, extendSeconds=1
            )
            assert status == 200, body
            until = epoch_ms(body["leaseUntil"])
            if until > after:
                return until
            assert time.monotonic() < deadline, "the daemon's clock stands still"

    # ---------------------------------------------------------------- invariants

    @invariant()
    def counts_match(self) -> None:
        """The queue's counts are the model's, after every step."""
        self.figures.steps += 1
        status, stats = self.api.call("GET", f"/v1/codeq/admin/queues/{self.command}", "admin")
        assert status == 200, stats
        model = {
            "ready": len(self.order()),
            "delayed": sum(t.status == "PENDING" and t.delayed for t in self.tasks.values()),
            "inProgress": len(self.leased),
            "dlq": sum(t.dead_lettered for t in self.tasks.values()),
        }
        assert {name: stats[name] for name in model} == model, (stats, model)

    def teardown(self) -> None:
        """Every task is where the model says; ended ones ended once; the ready ones
        come out in the model's order."""
        for task in self.tasks.values():
            self.check_task(task)
        if self.tasks:
            body = {"commands": [self.command], "leaseSeconds": LONG_LEASE, "count": 1000}
            status, answer = self.api.call("POST", f"{TASKS}/claim/batch", "worker", body)
            drained = [t["id"] for t in answer["tasks"]] if status == 200 else []
            assert drained == self.order(), (drained, self.order())
        self.figures.requests = self.api.requests

    def check_task(self, task: TaskModel) -> None:
        status, stored = self.api.call("GET", f"{TASKS}/{task.id}", "producer")
        assert status == 200, (task, stored)
        assert (stored["status"], stored["attempts"]) == (task.status, task.attempts), (
            stored,
            task,
        )
        assert stored.get("cancelRequested", False) == task.cancel_requested, (stored, task)
        if task.status == "IN_PROGRESS":
            assert stored["workerId"] == task.owner, (stored, task)
        if task.status == "PENDING":
            assert "workerId" not in stored, stored
        if task.error is not None:
            assert stored["error"] == task.error, (stored, task)
        status, timeline = self.api.call("GET", f"{TASKS}/{task.id}/history", "producer")
        assert status == 200, timeline
        ends = [e["event"] for e in timeline["history"] if e["event"] in TERMINAL_EVENTS]
        assert len(ends) == (1 if task.status in TERMINAL else 0), (ends, task)
        status, result = self.api.call("GET", f"{TASKS}/{task.id}/result", "producer")
        if task.status in ("COMPLETED", "FAILED") and not task.dead_lettered:
            assert status == 200 and result["result"]["status"] == task.status, result
        elif task.status not in TERMINAL:
            assert status == 404, result


def run_model(base: str, figures: Figures) -> None:
    """Runs the state machine against the daemon at `base` (blocking)."""
    machine = type("Lifecycle", (LifecycleModel,), {"api": SyncApi(base), "figures": figures})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
            print_blob=True,
            # Shrinking replays failing runs for up to minutes (each lease expiry is a
            # real second): the failing steps are printed as found, with their blob.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        ),
    )


async def test_the_lifecycle_matches_the_model(
    start_daemon: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    """Random sequences of every lifecycle operation leave each task where the model
    says: none lost, none leased twice, every ended task ended exactly once."""
    running = await start_daemon(
        backoff_base_seconds=0, backoff_max_seconds=NACK_DELAY_CAP, history_limit=200
    )
    figures = Figures()
    started = time.monotonic()
    await asyncio.to_thread(run_model, running.url, figures)
    took = time.monotonic() - started
    store = request.node.callspec.params["store_server"]
    assert figures.examples >= EXAMPLES and figures.claims > 0, figures
    report(
        request.config,
        "lifecycle model",
        f"{store}: {figures.examples} examples, {figures.steps} steps, {figures.tasks} tasks, "
        f"{figures.claims} leases, {figures.expiries} lease expiries, "
        f"{figures.requests} requests in {took:.1f} s",
    )
    report(
        request.config,
        "lifecycle model",
        "  outcomes: " + ", ".join(f"{name} {n}" for name, n in sorted(figures.outcomes.items())),
    )
