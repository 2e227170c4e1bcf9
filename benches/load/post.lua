-- A ~110-byte event as a browser would post it, from 1024 visitors in turn (the same for every
-- target). One visitor alone would make `fast` replay every event of a single visitor, which
-- must go one after another; real traffic spreads over many. The requests are built once.
local requests = {}
local n = 0
init = function(args)
  for i = 1, 1024 do
    local body = string.format('{"td_client_id":"42a508e2-d9b1-4baa-9eb2-%012d","td_url":"https://example.com/retail","td_path":"/retail"}', i)
    requests[i] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
  end
end
request = function()
  n = n % 1024 + 1
  return requests[n]
end
