-- Shared by the shopstream wrk scripts: per-thread ids, 2xx counting, one JSON summary line,
-- and the senders' headers.
--
-- The third script argument, when given, is a Lua file of visitors drawn by the generator
-- (written by shopstream_bench.api.visitors_lua): {X-Forwarded-For, User-Agent} each. A
-- request then carries its user's visitor's headers (visitor k is user k's, modulo their
-- number), as the generator sends them as the shop's front proxy; without it, neither.
--
-- Each wrk thread has its own Lua state; setup() runs in the main state and keeps the
-- threads so done() can add up what each one counted.

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  sent, ok, not_ok = 0, 0, 0
  run = args[1] or "run"
  per_request = tonumber(args[2] or "1")
  senders = {}
  if args[3] then
    for k, v in ipairs(dofile(args[3])) do
      -- wrk.format takes these in place of wrk.headers (it adds Host and Content-Length)
      local h = {["X-Forwarded-For"] = v[1], ["User-Agent"] = v[2]}
      for name, value in pairs(wrk.headers) do if name ~= "Host" then h[name] = value end end
      senders[k] = h
    end
  end
end

-- The headers of a request from `user`: its visitor's, or nil (wrk.headers) without visitors.
function headers_of(user)
  if #senders == 0 then return nil end
  return senders[user % #senders + 1]
end

function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else not_ok = not_ok + 1 end
end

-- Printed on stdout as `WRK_JSON {...}`; times in microseconds.
function done(summary, latency, requests)
  local sum_sent, sum_ok, sum_not_ok = 0, 0, 0
  for _, t in ipairs(threads) do
    sum_sent = sum_sent + t:get("sent")
    sum_ok = sum_ok + t:get("ok")
    sum_not_ok = sum_not_ok + t:get("not_ok")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"sent":%d,"ok":%d,"not_ok":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d}}\n',
    summary.requests, summary.duration, summary.bytes, sum_sent, sum_ok, sum_not_ok,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
