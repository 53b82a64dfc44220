"""A training run directory (runs/<name>) -> its curve as JSON: held-out checks, loss and train accuracy per 10 steps, train seconds.

Usage: python benchmarks/export_curve.py runs/<name> OUT.json"""
import json, sys
import numpy as np
import torch
run, out = sys.argv[1], sys.argv[2]
info = json.load(open(f"{run}/train_info.json"))
h = torch.load(f"{run}/trainer_state.pt", weights_only=False)["history"]
per10 = lambda xs: [round(float(np.mean(xs[i:i + 10])), 4) for i in range(0, len(xs), 10)]
d = {"run": run.split("/")[-1], "step": info["step"], "train_seconds": info["train_seconds"], "train_config": info["train_config"],
     "eval": h["eval"], "loss_per_10_steps": per10(h["loss"]), "train_acc_per_10_steps": per10(h["train_acc"])}
if h.get("skipped"):
    d["skipped_nonfinite_steps"] = h["skipped"]
json.dump(d, open(out, "w"), indent=1)
print(out, d["train_acc_per_10_steps"][-10:])
