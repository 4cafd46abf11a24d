"""What one request to the arl2rt Python-backend model carries and what its response holds.

One request makes one block of one stream; the stream is the request's sequence (Triton's correlation ID). Every
request sends ``BLOCK``, the index of the block it asks for, so that a lost or repeated request is an error rather than
a silent gap. The request that starts a sequence may send the stream's text and seed:

* ``SEED`` (int64): the noise seed (and, for random weights, the random text's), as ``arl2rt generate --seed``; 0 if
  absent;
* ``PROMPT`` (BYTES ``[1]``): the prompt, UTF-8;
* ``CONTEXT`` (float32 ``[text_len, text_dim]``): precomputed text embeddings, as ``--context``.

With neither, the model's default text, exactly as ``arl2rt generate`` picks it. The response holds ``LATENTS`` (the
block's latents), ``FRAMES`` for a model with a VAE decoder (the block's video), ``STATE_BYTES`` (what the stream's
StateStore holds now) and ``STREAMS`` (the streams the answering model instance holds, this one included).

Names and dtypes live here only: the repository writer, the model and the client read them from this module.
"""

from __future__ import annotations

# request
BLOCK, SEED, PROMPT, CONTEXT = "BLOCK", "SEED", "PROMPT", "CONTEXT"
# response
LATENTS, FRAMES, STATE_BYTES, STREAMS = "LATENTS", "FRAMES", "STATE_BYTES", "STREAMS"
# the sequence batcher's control inputs (name -> Triton control kind); the batcher fills them in, clients never do
START, END, READY, CORRID = "START", "END", "READY", "CORRID"
CONTROLS = {
    START: "CONTROL_SEQUENCE_START",
    END: "CONTROL_SEQUENCE_END",
    READY: "CONTROL_SEQUENCE_READY",
    CORRID: "CONTROL_SEQUENCE_CORRID",
}
# the model config parameter holding the serving settings (JSON: model source, backend, threads, idle timeout ...)
SETTINGS_PARAMETER = "arl2rt"
