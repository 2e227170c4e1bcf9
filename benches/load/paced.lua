-- The events of post.lua, each connection waiting 10 ms between requests: the offered rate is
-- connections / (10 ms + latency), so load.sh picks the connection count for a target rate.
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
function delay()
  return 10
end
