"""Time and memory of an ARL2 stream versus video length: baseline, ARL2-75 %, ARL2-50 % and all-hybrid (issue 8).

Device run (one call; it prints the plan and its estimated cost first):

    PYTHONPATH=src python3 -m benchmarks.stream_scaling --out $OUT/stream_scaling.md

It writes ``stream_scaling.md`` (tables against the issue's anchors), ``.csv`` (one row per configuration and
position), ``.json`` (everything, raw) and ``.png`` (time per block and peak memory versus latent frames) beside
``--out``, rewriting them after every measurement, so a run cut short still leaves what it measured. Other modes:

    python -m benchmarks.stream_scaling --estimate                       # plan, estimated cost, device command
    python -m benchmarks.stream_scaling --smoke --out /tmp/ss/stream_scaling.md   # tiny config on the CPU, seconds
    python -m benchmarks.stream_scaling --plot-from stream_scaling.csv   # the PNG from a CSV (needs matplotlib)

What one run measures (the definitions are repeated in the markdown):

* Configurations: random weights at the real dims of the base preset (``wan2.1-t2v-1.3b``: 30 layers, dim 1536,
  12 heads of 128, FFN 8960, 480x832 -> 1560 tokens per latent frame), bf16; 3 latent frames = 4680 tokens per
  block; 5 passes per block (4 denoising + the clean pass). Hybrid layers: baseline none (softmax everywhere, global
  K/V cache); ARL2-75 % the preset's 0-21; ARL2-50 % 0-14 (upstream's choice is not published: our pick);
  all-hybrid every layer.
* Position N (latent frames): the video has N latent frames once the block is done. The block holds frames N-3..N-1,
  the softmax layers attend to N-3 cached frames plus the block (N x 1560 keys), and the caches are sized to N frames,
  as ARL2's pipeline sizes them to the whole video. Caches are filled with random K/V through ``KVCache.append``; GDN
  states are random. Video frames = 4N - 3 (Wan's VAE: 1 + 4 per latent frame after the first); a block is 12.
* Time per block: the real step path (``TorchBackend`` running ``export/steps.py`` -> ``CausalDiT.step``; GDN write
  through ``torch.ops.arl2.gdn_state_update`` -> Triton on CUDA; block read through ``plugins/gdn/read.py`` on CUDA)
  driven by :class:`arl2rt.runtime.cuda_graph.StaticBlock` (4 denoising passes with device-side re-noising, the clean
  pass, the K/V append), captured once per position as one CUDA graph and replayed; median (20-80 % quantiles) of
  CUDA-event times; also the eager time of the warm-up call before the capture (Triton kernels are compiled and
  cuDNN plans built by the earlier sections at the same shapes).
  SDPA runs with the backend priority cuDNN > flash > mem-efficient > math for every configuration.
* Peak memory: ``torch.cuda.max_memory_allocated`` over the block at N after a reset, with the weights, text K/V,
  caches and GDN states resident ("accounted" = those resident bytes alone, the only number on a CPU).
* Breakdown: each component timed alone at the block's shapes (one CUDA graph per component, rotating input sets
  where they are small enough to sit in L2, CUDA events), times its calls per block; "rest" = block minus their sum
  (norms, RoPE, modulation, gates, casts, the K/V append, launch gaps; negative if the components ran slower alone).
* Compute floor (docs/performance.md §2): 2 x per-token weights x tokens for every linear map (incl.
  LoRA factors, phi maps, gate projections, patch embedding, head), 4 Sq Skv d H for each attention, 2 T H d^2 for the
  GDN read and T H (4 d^2 + 6 C d) (C = 64) for the state-only GDN write, at 989 TFLOP/s (dense bf16 H100/H200 spec).
* Complete runs: ``Streamer.next_block`` (the user-facing loop, eager, no CUDA graphs) from an empty stream to
  ``--full-frames`` latent frames, caches sized to the whole video; total = sum of block times after the text is
  encoded; peak memory over the run.
"""
