-- PUT /SendEvent: one valid UserEvent per request, each body unique (thread id and counter
-- in SessionId, varied user, product, time and prices), sent as the user's visitor when
-- given their file (common.lua).
-- wrk -s send_event.lua http://host:port -- <run-tag> 1 [visitors.lua]
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.method = "PUT"
wrk.path = "/SendEvent"
wrk.headers["Content-Type"] = "application/json"

local names = {"PageVisited", "AddedBasket", "CheckedProductReviews"}
local fmt = '{"UserId":"user-%d","SessionId":"sess-%s-%d-%d","EventName":"%s",' ..
            '"TimeStamp":"2026-11-22T10:%02d:%02d.%03dZ",' ..
            '"Attributes":{"ProductId":"sku-%05d","Price":%d.%02d,"Discount":%d.%02d}}'

function request()
  sent = sent + 1
  local n = sent
  local user = (n * 7919 + id * 104729) % 20000
  local body = string.format(fmt, user, run, id, n, names[n % 3 + 1],
                             n % 60, (n * 13) % 60, n % 1000,
                             n % 5000, 5 + n % 500, n % 100, n % 5, (n * 3) % 100)
  return wrk.format(nil, nil, headers_of(user), body)
end
