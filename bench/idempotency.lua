-- wrk script for bench/idempotency.sh: POSTs a small JSON body; IDEM_MODE picks the key:
-- none (no Idempotency-Key), unique (a new key per request) or same (one key: replays).
wrk.method = "POST"
wrk.body = '{"qty":1}'
wrk.headers["Content-Type"] = "application/json"
local mode = os.getenv("IDEM_MODE") or "none"
local prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000000))
local counter = 0
request = function()
  if mode == "unique" then
    counter = counter + 1
    wrk.headers["Idempotency-Key"] = prefix .. "-" .. counter
  elseif mode == "same" then
    wrk.headers["Idempotency-Key"] = "bench-same-key"
  end
  return wrk.format()
end
