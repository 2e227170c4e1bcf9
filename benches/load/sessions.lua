-- Returning visitors: 1021 of them at a time, each sending 5 events, one a round, then the next
-- 1021 (ids never seen before). The first argument offsets the ids, so that each run starts on
-- new visitors. Behind a round-robin balancer over two instances, consecutive requests go to
-- alternate instances, and 1021 being odd, a visitor's events alternate between them too: each
-- instance alone misses a visitor's first event there (3 hits in 5 at best), an instance with
-- the shared tier only the visitor's very first (4 in 5). A second argument paces each
-- connection: that many ms between its requests (as paced.lua). Run with -t1 (one counter).
local active, visits = 1021, 5
local offset, n, pace = 0, 0, 0
init = function(args)
  offset = tonumber(args[1] or "0")
  pace = tonumber(args[2] or "0")
end
delay = function()
  return pace
end
request = function()
  local visitor = offset + (n % active) + active * math.floor(n / (active * visits))
  n = n + 1
  local body = string.format('{"td_client_id":"42a508e2-d9b1-4baa-%016d","td_path":"/retail"}', visitor)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
