"""The reference of `rustworthy bench allreduce`: torch.distributed's all-reduce on the Gloo
backend, timed with the same protocol as rustworthy's side (warm-up, then per operation: barrier,
clock, all-reduce, clock; rank 0's times). Run under a launcher that sets RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT (rustworthy launch or torchrun)."""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--numel", type=int, required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    # The same transport as rustworthy's side: Gloo over the loopback interface.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo")
    t = torch.ones(a.numel, dtype=torch.float32)
    for _ in range(a.warmup):
        dist.all_reduce(t)
    times = []
    for _ in range(a.iters):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - t0)
    expected = dist.get_world_size() ** (a.warmup + a.iters)
    ok = abs(t[0].item() - expected) <= 1e-6 * expected
    if dist.get_rank() == 0:
        with open(a.out + ".tmp", "w") as f:
            json.dump({"seconds": times, "correct": ok, "torch": torch.__version__}, f)
        os.replace(a.out + ".tmp", a.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
