// BullMQ full lifecycles per second (add -> process -> completed), for bench/run.py.
//
//   node bench.mjs --redis redis://127.0.0.1:6379 --n 10000 [--producers 8]
//                  [--concurrency 16] [--bulk 0] [--queue bench]
//
// Producers add jobs while one Worker (concurrency C, a no-op processor) runs them,
// as BullMQ's own benchmarks do; both talk straight to Redis. --bulk B > 0 makes each
// producer call Queue.addBulk with B jobs instead of Queue.add with one. Completed jobs
// are kept (BullMQ's default), as codeq keeps finished tasks and their results.
// Prints one JSON line: lifecycles_per_s, n, seconds, added->started latency p50/p99.
import { createRequire } from "node:module";
import { parseArgs } from "node:util";
import { Queue, Worker } from "bullmq";

const { values: args } = parseArgs({
  options: {
    redis: { type: "string", default: "redis://127.0.0.1:6379" },
    n: { type: "string", default: "10000" },
    producers: { type: "string", default: "8" },
    concurrency: { type: "string", default: "16" },
    bulk: { type: "string", default: "0" },
    queue: { type: "string", default: "bench" },
  },
});
const n = Number(args.n);
const producers = Number(args.producers);
const bulk = Number(args.bulk);
const url = new URL(args.redis);
// maxRetriesPerRequest: null is what BullMQ requires of a Worker's connection.
const connection = {
  host: url.hostname,
  port: Number(url.port || 6379),
  maxRetriesPerRequest: null,
};

function percentile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

const queue = new Queue(args.queue, { connection });
const latencies = [];
let completed = 0;
let finish;
const finished = new Promise((resolve) => {
  finish = resolve;
});

const worker = new Worker(
  args.queue,
  async (job) => {
    latencies.push(Date.now() - job.timestamp);
  },
  { connection, concurrency: Number(args.concurrency), autorun: false },
);
worker.on("completed", () => {
  completed += 1;
  if (completed === n) finish();
});
worker.on("failed", (job, err) => {
  console.error(`job ${job?.id} failed: ${err}`);
  process.exit(1);
});
await queue.waitUntilReady();
await worker.waitUntilReady();

let toAdd = n;
async function produce() {
  while (toAdd > 0) {
    if (bulk > 0) {
      const count = Math.min(bulk, toAdd);
      toAdd -= count;
      await queue.addBulk(Array.from({ length: count }, () => ({ name: "job", data: { n: 1 } })));
    } else {
      toAdd -= 1;
      await queue.add("job", { n: 1 });
    }
  }
}

const started = performance.now();
const running = worker.run();
await Promise.all(Array.from({ length: producers }, produce));
await finished;
const seconds = (performance.now() - started) / 1000;
await worker.close();
await running;
await queue.close();

const version = createRequire(import.meta.url)("bullmq/package.json").version;
console.log(
  JSON.stringify({
    lifecycles_per_s: n / seconds,
    n,
    seconds,
    p50_ms: percentile(latencies, 0.5),
    p99_ms: percentile(latencies, 0.99),
    bullmq: version,
  }),
);
