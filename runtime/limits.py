"""What one request may hold, checked before the work it bounds (README: Limits).

The rest come from the manifest, per model: characters per text (`max_chars`), image
pixels before decoding (`max_pixels`), and per tensor its dimensions and values (the
input's shape, at the model's max batch and longest sequence). The body's bytes are the
server's `--max-body-mb` (Lambda's 6 MB payload limit on Lambda)."""

# Texts or images per task-mode request. Each max_batch slice is one model call; with no
# bound, a 6 MB body of 1.5 M one-letter strings is tokenized before anything else runs
# (on Lambda until the timeout). The server's queue (--max-queue, in rows) must hold it.
MAX_INPUTS = 32
# Longest image side over the shortest. Resizing the shortest edge to the model's size
# scales the other by the same factor: a 1x20000 PNG would become 256x5,120,000 pixels.
MAX_ASPECT = 32
