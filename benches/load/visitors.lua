-- A new visitor id on every request, to fill the offer cache.
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"td_client_id":"42a508e2-d9b1-4baa-%016d","td_path":"/retail"}', counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
