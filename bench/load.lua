-- bench/load.lua — wrk script for bench/load.sh: each connection sends
-- one-sentence POST /translate requests, cycling through the JSON bodies of
-- a file (one per line), and at the end one JSON line with the numbers.
--
--   wrk -t1 -cC -dDs --timeout 120s -s bench/load.lua URL -- BODIES_FILE
--
-- failed counts every request that did not end in a 2xx/3xx answer:
-- connect, read, write and timeout errors and error statuses.
local bodies, idx = {}, 0

function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  assert(#bodies > 0, "no request bodies in " .. tostring(args[1]))
end

function request()
  idx = idx % #bodies + 1
  return wrk.format("POST", "/translate", {["Content-Type"] = "application/json"},
                    bodies[idx])
end

function done(summary, latency, requests)
  local e = summary.errors
  local ms = function(us) return us / 1000 end
  io.write(string.format(
    '{"requests": %d, "failed": %d, "seconds": %.3f, "sentences_per_s": %.2f, ' ..
    '"mean_ms": %.2f, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f}\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.duration / 1e6,
    (summary.requests - e.status) / (summary.duration / 1e6),
    ms(latency.mean), ms(latency:percentile(50)), ms(latency:percentile(95)),
    ms(latency:percentile(99))))
end
