-- Shared by every target of bench.http: prints one JSON line when wrk is done
-- (requests, seconds, errors, non-2xx answers, p50 and p99 latency in µs).
-- With OPSGATE_BENCH_REQUESTS set, each wrk thread reads its own file of
-- pre-computed requests (one "METHOD<TAB>PATH<TAB>header: value|...<TAB>body"
-- per line) and sends them in order: every DPoP proof is used exactly once.
-- Otherwise wrk sends its command-line request (OpenBao's, with a static token).

local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local requests = nil
local index = 0

local function split(text, sep)
  local out = {}
  for part in string.gmatch(text, "([^" .. sep .. "]*)") do
    table.insert(out, part)
  end
  return out
end

function init(args)
  local prefix = os.getenv("OPSGATE_BENCH_REQUESTS")
  if prefix == nil or prefix == "" then
    return
  end
  requests = {}
  for line in io.lines(prefix .. "-" .. id) do
    local method, path, header_text, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    for _, pair in ipairs(split(header_text, "|")) do
      local name, value = pair:match("^([^:]+): (.*)$")
      if name then
        headers[name] = value
      end
    end
    table.insert(requests, wrk.format(method, path, headers, body))
  end
end

function request()
  if requests == nil then
    return wrk.request()
  end
  index = index + 1
  if index > #requests then
    index = 1 -- wraps only when the run outlasts its proofs: replays answer 401
  end
  return requests[index]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "errors": %d, "non2xx": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
