"""The torch side of bench/vs_torch.py, run in torch's own virtualenv (it imports torch and the
standard library only, never this project).

  python bench/torch_peer_worker.py PEER V d L H ff T B

PEER is the path of a peer model file defining `LM(V, d, L, H, ff)` (e.g. a torch_decoder.py);
its training step is the one that file times: cross-entropy of next tokens, backward, Adam.
The worker builds the eager and the torch.compile'd step on the same shapes, warms both
(compiling the second), prints one JSON line {"ready": ...}, then answers each stdin line
"eager N" / "compiled N" with one JSON line of N step times in seconds; "quit" ends it.
"""
import importlib.util
import json
import sys
import time

import torch
import torch.nn.functional as F


def load_peer(path):
    spec = importlib.util.spec_from_file_location("torch_peer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["torch_peer"] = module  # torch.compile re-imports the module of the code it traces
    spec.loader.exec_module(module)
    return module


def make_step(module, V, d, L, H, ff, T, B, compiled):
    torch.manual_seed(0)
    model = module.LM(V, d, L, H, ff)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randint(0, V, (B, T + 1))

    def step():
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    params = sum(p.numel() for p in model.parameters())
    return (torch.compile(step) if compiled else step), params


def main():
    path = sys.argv[1]
    V, d, L, H, ff, T, B = map(int, sys.argv[2:9])
    module = load_peer(path)
    steps, params, warm_s = {}, 0, {}
    for kind in ("eager", "compiled"):
        start = time.perf_counter()
        steps[kind], params = make_step(module, V, d, L, H, ff, T, B, kind == "compiled")
        for _ in range(2):
            steps[kind]()
        warm_s[kind] = time.perf_counter() - start
    print(json.dumps({"ready": True, "params": params, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "warm_s": warm_s}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        kind, count = words[0], int(words[1])
        times = []
        for _ in range(count):
            start = time.perf_counter()
            steps[kind]()
            times.append(time.perf_counter() - start)
        print(json.dumps({"kind": kind, "step_s": times}), flush=True)


if __name__ == "__main__":
    main()
