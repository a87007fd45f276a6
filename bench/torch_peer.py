#!/usr/bin/env python3
"""PyTorch peers of dvemb's GPU backward pass (REFERENCE §3), run by bench/cuda.ts on the GPU
machine (which has PyTorch). Prints one JSON object.

The recursion per step, for each of `blocks` blocks with its own k x k propagator P:
    E = diag(eta w) G P^T        (the step's embeddings)
    P <- c P - E^T G
written three ways, as the [CUDA] issue lists the peers:
  loop     a Python loop over the blocks (as Python implementations usually write it)
  batched  one torch.bmm per half-step over all blocks
  graph    the batched step captured in a CUDA graph (`--graph-steps` steps per graph), replayed
Everything stays on the device (no host copies), fp32 with TF32 off.

    python3 bench/torch_peer.py [--blocks 24] [--k 256] [--batch 16] [--steps 2000]
"""
import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=24)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--loop-steps", type=int, default=200, help="the loop peer is slow")
    ap.add_argument("--graph-steps", type=int, default=64)
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print(json.dumps({"error": "no GPU: torch.cuda.is_available() is False"}))
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    nb, k, b = args.blocks, args.k, args.batch
    pool = args.graph_steps  # distinct steps of rows, reused cyclically
    gen = torch.Generator(device=dev).manual_seed(7)
    rows = (torch.rand(pool, nb, b, k, device=dev, generator=gen) - 0.5) * 0.1  # (step, block, b, k)
    eta = 0.01
    w = torch.full((b,), 1.0 / b, device=dev)
    scale = (eta * w).view(1, b, 1)
    embeddings = torch.empty(pool, nb, b, k, device=dev)

    def fresh_p() -> torch.Tensor:
        return torch.eye(k, device=dev).repeat(nb, 1, 1).contiguous()

    def step_loop(p: torch.Tensor, s: int) -> None:
        for i in range(nb):
            g = rows[s, i]
            e = (eta * w)[:, None] * (g @ p[i].T)
            p[i] = p[i] - e.T @ g
            embeddings[s, i] = e

    def step_batched(p: torch.Tensor, s: int) -> None:
        g = rows[s]
        e = torch.bmm(g, p.transpose(1, 2)) * scale
        p.baddbmm_(e.transpose(1, 2), g, beta=1.0, alpha=-1.0)
        embeddings[s].copy_(e)

    def timed(run, steps: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(steps)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    def run_loop(steps: int) -> None:
        p = fresh_p()
        for s in range(steps):
            step_loop(p, s % pool)

    def run_batched(steps: int) -> None:
        p = fresh_p()
        for s in range(steps):
            step_batched(p, s % pool)

    # The graph: `pool` batched steps captured once, replayed.
    p_graph = fresh_p()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as PyTorch requires
        for s in range(3):
            step_batched(p_graph, s)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for s in range(pool):
            step_batched(p_graph, s)

    def run_graph(steps: int) -> None:
        for _ in range(max(1, steps // pool)):
            graph.replay()

    run_batched(20)  # warm-up (cuBLAS heuristics)
    t_loop = timed(run_loop, args.loop_steps)
    t_batched = timed(run_batched, args.steps)
    graph_steps = max(1, args.steps // pool) * pool
    run_graph(pool)
    t_graph = timed(run_graph, graph_steps)

    flops = 4.0 * b * nb * k * k
    result = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "shape": {"blocks": nb, "k": k, "batch": b, "tf32": False},
        "loop": {"steps": args.loop_steps, "seconds": t_loop, "stepsPerSec": args.loop_steps / t_loop},
        "batched": {"steps": args.steps, "seconds": t_batched, "stepsPerSec": args.steps / t_batched},
        "graph": {"steps": graph_steps, "seconds": t_graph, "stepsPerSec": graph_steps / t_graph,
                  "stepsPerGraph": pool},
        "flopsPerStep": flops,
    }
    for peer in ("loop", "batched", "graph"):
        result[peer]["gflops"] = result[peer]["stepsPerSec"] * flops / 1e9
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
