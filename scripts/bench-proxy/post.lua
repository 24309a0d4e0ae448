-- wrk script for `cargo xtask bench proxy`: the same small non-streamed chat
-- completion on every request. BENCH_BODY overrides the body.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")
    or '{"model":"default_model","max_tokens":8,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hi."}]}'
