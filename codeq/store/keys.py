"""The store's key layout and task-id routing, in one place.

Every key of a tenant shares one hash tag, ``{<tag>}``, where the tag is a short
digest of the tenant name: all queues of a tenant live in one hash slot, so a
claim across several commands is one single-slot script even on a cluster.
A task ID starts with its tenant's tag, so any operation by ID finds its slot
with no index lookup.

Layout (``P`` = ``cq:{tag}:``)::

    cq:tenants               set      tags of every tenant that has queues (discovery)
    P meta                   hash     tenant -> the tenant's name (for operators)
    P cmds                   set      commands that have ever had a task
    P paused                 set      commands whose claims are paused
    P t:<id>                 hash     the task record (idemDigest names its idempotency key)
    P res:<id>               string   the result JSON
    P h:<id>                 list     the task's bounded history (JSON entries)
    P q:<command>:<tier>     list     ready task IDs, tier 0..9; LPUSH new, RPOP oldest
    P ip:<command>           zset     in-progress task IDs by lease expiry (ms)
    P dl:<command>           zset     delayed task IDs by visible time (ms)
    P dlq:<command>          zset     dead-lettered task IDs by time (ms)
    P ret                    zset     terminal task IDs by terminal time (retention)
    P end:<command>:<status> zset     terminal task IDs of a command and status by terminal time
    P idem:<sha256(key)>     string   idempotency key -> task ID, with a TTL
    P sub:<id>               hash     a worker subscription (webhook for "work available")
    P subs                   zset     subscription IDs by expiry (ms): the cleaner's index
    P subs:<command>         zset     subscription IDs of a command by expiry ('*': every command)
    P subcmds                set      commands that ever had a subscription (for the gauge)
    P ntf:<subscription id>  string   minIntervalSeconds gate: set NX with a TTL per notification
    P rr:<command>:<group>   string   round-robin counter of a delivery group, with a TTL
    P cb:<callback id>       hash     a result callback in the outbox (URL, body record, attempts)
    P cbq                    zset     callback IDs by next delivery attempt (ms)
    P cbdead                 zset     abandoned callback IDs by abandon time (ms)
    P kq:<command>:<tier>:<key>  list  ready task IDs of one concurrencyKey in a tier (as q:)
    P kr:<command>:<tier>    zset     the tier's rotation: keys with ready tasks and a free
                                      slot, by when they got in line (ms x 1000; with
                                      fairness round_robin each claim sends its key to the back)
    P kf:<command>           hash     concurrencyKey -> its tasks in progress
    P kb:<command>           set      keys that left the rotations with every slot taken
    P kn:<command>           string   how many keyed tasks are ready (the depth)
    P qs:<command>           hash     queue settings: maxInFlightPerKey, fairness
    P sch:<name>             hash     a recurring schedule: spec (JSON), next (ms, '' = ended),
                                      version, paused, fires, misfires, lastFireAt, lastTaskId
    P schs                   zset     names of the active schedules by next fire time (ms):
                                      the schedule firer's index (paused or ended: absent)
    P schn                   set      names of every schedule (the listing)

A callback ID is ``<task id>:<terminal time ms>``; a subscription ID, like a task
ID, starts with its tenant's tag.

Outside any tenant (``D`` = 16 hex digits of the SHA-256 of a bearer token)::

    cq:rl:{D}:<scope>        hash     a token bucket of one token and scope: tokens, at (ms)

The Lua side builds the same names in ``scripts/lib.lua``; a test keeps the two
in agreement. ``scripts/ratelimit.lua`` gets its one key from here.
"""

from __future__ import annotations

import hashlib
import secrets

PUBSUB_READY = "cq:ready"
TENANTS = "cq:tenants"

RATE_LIMIT_PREFIX = "cq:rl:"

_TAG_LEN = 12
_RATE_LIMIT_DIGEST_LEN = 16


def tenant_tag(tenant: str) -> str:
    """The hash tag of a tenant: 12 hex digits of its SHA-256."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:_TAG_LEN]


def prefix(tag: str) -> str:
    """The key prefix of a tenant; also the routing key passed as KEYS[1] to scripts."""
    return f"cq:{{{tag}}}:"


def new_task_id(tag: str) -> str:
    """A fresh task ID that routes to the tenant's slot: ``<tag>-<22 url-safe chars>``."""
    return f"{tag}-{secrets.token_urlsafe(16)}"


def new_subscription_id(tag: str) -> str:
    """A fresh subscription ID; like a task ID it routes to the tenant's slot."""
    return f"{tag}-s{secrets.token_urlsafe(12)}"


def tag_of(task_id: str) -> str:
    """The tenant tag a task ID routes to."""
    return task_id[:_TAG_LEN]


def task(tag: str, task_id: str) -> str:
    return f"{prefix(tag)}t:{task_id}"


def result(tag: str, task_id: str) -> str:
    return f"{prefix(tag)}res:{task_id}"


def history(tag: str, task_id: str) -> str:
    return f"{prefix(tag)}h:{task_id}"


def ready(tag: str, command: str, tier: int) -> str:
    return f"{prefix(tag)}q:{command}:{tier}"


def in_progress(tag: str, command: str) -> str:
    return f"{prefix(tag)}ip:{command}"


def delayed(tag: str, command: str) -> str:
    return f"{prefix(tag)}dl:{command}"


def dead_letter(tag: str, command: str) -> str:
    return f"{prefix(tag)}dlq:{command}"


def commands(tag: str) -> str:
    return f"{prefix(tag)}cmds"


def paused(tag: str) -> str:
    return f"{prefix(tag)}paused"


def retention(tag: str) -> str:
    return f"{prefix(tag)}ret"


def ended(tag: str, command: str, status: str) -> str:
    """The tasks of a command that ended with `status` (COMPLETED, FAILED, CANCELLED)."""
    return f"{prefix(tag)}end:{command}:{status}"


def meta(tag: str) -> str:
    return f"{prefix(tag)}meta"


def subscription(tag: str, subscription_id: str) -> str:
    return f"{prefix(tag)}sub:{subscription_id}"


def subscriptions(tag: str) -> str:
    return f"{prefix(tag)}subs"


def subscriptions_of(tag: str, command: str) -> str:
    return f"{prefix(tag)}subs:{command}"


def subscribed_commands(tag: str) -> str:
    return f"{prefix(tag)}subcmds"


def notify_gate(tag: str, subscription_id: str) -> str:
    return f"{prefix(tag)}ntf:{subscription_id}"


def round_robin(tag: str, command: str, group: str) -> str:
    return f"{prefix(tag)}rr:{command}:{group}"


def callback(tag: str, callback_id: str) -> str:
    return f"{prefix(tag)}cb:{callback_id}"


def outbox(tag: str) -> str:
    return f"{prefix(tag)}cbq"


def abandoned_callbacks(tag: str) -> str:
    return f"{prefix(tag)}cbdead"


def keyed_ready(tag: str, command: str, tier: int, concurrency_key: str) -> str:
    return f"{prefix(tag)}kq:{command}:{tier}:{concurrency_key}"


def key_rotation(tag: str, command: str, tier: int) -> str:
    return f"{prefix(tag)}kr:{command}:{tier}"


def key_in_flight(tag: str, command: str) -> str:
    return f"{prefix(tag)}kf:{command}"


def blocked_keys(tag: str, command: str) -> str:
    return f"{prefix(tag)}kb:{command}"


def keyed_depth(tag: str, command: str) -> str:
    return f"{prefix(tag)}kn:{command}"


def queue_settings(tag: str, command: str) -> str:
    return f"{prefix(tag)}qs:{command}"


def schedule(tag: str, name: str) -> str:
    return f"{prefix(tag)}sch:{name}"


def schedules_due(tag: str) -> str:
    """The active schedules of a tenant by next fire time."""
    return f"{prefix(tag)}schs"


def schedule_names(tag: str) -> str:
    return f"{prefix(tag)}schn"


def idempotency(tag: str, key: str) -> str:
    return idempotency_by_digest(tag, idempotency_digest(key))


def idempotency_by_digest(tag: str, digest: str) -> str:
    """The idempotency key whose digest a task record keeps (``idemDigest``)."""
    return f"{prefix(tag)}idem:{digest}"


def rate_limit(token: str, scope: str) -> str:
    """The token bucket of a bearer token for one scope (create, claim, ...).

    The store sees a digest of the token, never the token; its own hash tag puts
    the bucket in a slot of its own.
    """
    digest = hashlib.sha256(token.encode()).hexdigest()[:_RATE_LIMIT_DIGEST_LEN]
    return f"{RATE_LIMIT_PREFIX}{{{digest}}}:{scope}"


def idempotency_digest(key: str) -> str:
    """Producers choose idempotency keys freely; the store sees only their digest."""
    return hashlib.sha256(key.encode()).hexdigest()
