-- wrk script: single-event appendEvents of ~200 bytes to random streams out of 100,000,
-- counting answers refused as OVERLOADED (HTTP 503, or 200 with the code in the body).
-- Usage: wrk -t2 -c64 -d30s -s bench/http/append.lua http://127.0.0.1:8080
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local pad = string.rep("x", 120)

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  overloaded = 0
  other_errors = 0
end

function request()
  local stream = "acct-" .. math.random(1, 100000)
  local body = '{"query":"mutation($s:String!,$d:JSON!){appendEvents(streamId:$s,events:[{type:\\"Deposited\\",data:$d}]){lastPosition}}",'
    .. '"variables":{"s":"' .. stream .. '","d":{"amount":1,"note":"' .. pad .. '"}}}'
  return wrk.format(nil, "/graphql", nil, body)
end

function response(status, headers, body)
  if status == 503 or string.find(body, "OVERLOADED", 1, true) then
    overloaded = overloaded + 1
  elseif status ~= 200 or string.find(body, '"errors"', 1, true) then
    other_errors = other_errors + 1
  end
end

function done(summary, latency, requests)
  local refused, failed = 0, 0
  for _, thread in ipairs(threads) do
    refused = refused + thread:get("overloaded")
    failed = failed + thread:get("other_errors")
  end
  io.write(string.format(
    "RESULT requests=%d refused=%d other_errors=%d refused_pct=%.1f p50_ms=%.1f p99_ms=%.1f max_ms=%.1f rps=%.0f\n",
    summary.requests, refused, failed, 100 * refused / math.max(summary.requests, 1),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests / (summary.duration / 1e6)))
end
