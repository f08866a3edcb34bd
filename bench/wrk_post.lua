-- wrk script shared by every contender: POSTs pre-built single-row JSON bodies round-robin
-- and, when the run ends, prints one line "BENCH_WRK {json}" with exact latency percentiles
-- (wrk keeps a per-microsecond histogram) and the error counts by kind.
--
-- Usage: wrk -s bench/wrk_post.lua URL -- BODIES_FILE   (one JSON body per line)

local prepared = {}
local count = 0
local next_index = 0

function init(args)
  local path = args[1]
  if path == nil then
    error("pass the bodies file after --: wrk -s wrk_post.lua URL -- BODIES_FILE")
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  for line in io.lines(path) do
    if #line > 0 then
      count = count + 1
      -- Formatted once here, so each request costs wrk no Lua work beyond a table lookup.
      prepared[count] = wrk.format(nil, nil, nil, line)
    end
  end
  if count == 0 then
    error("no request bodies in " .. path)
  end
end

function request()
  next_index = next_index % count + 1
  return prepared[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_WRK {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%.1f,"mean":%.1f,"max":%.1f,"p50":%.1f,"p90":%.1f,' ..
    '"p99":%.1f,"p999":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
