-- A new visitor id on every request, to fill the offer cache. The first argument offsets the
-- ids, so that successive runs add new visitors.
local counter = 0
init = function(args)
  counter = tonumber(args[1] or "0")
end
request = function()
  counter = counter + 1
  local body = string.format('{"td_client_id":"42a508e2-d9b1-4baa-%016d","td_path":"/retail"}', counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
