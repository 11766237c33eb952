-- POST /PurchasedItems: an array of N valid purchases per request (N = the second script
-- argument, 100 by default), every OrderId and SessionId unique, totals that add up; each
-- request sent as one of the visitors when given their file (common.lua).
-- wrk -s purchased_items.lua http://host:port -- <run-tag> <N> [visitors.lua]
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.method = "POST"
wrk.path = "/PurchasedItems"
wrk.headers["Content-Type"] = "application/json"

local payments = {"CreditCard", "DebitCard", "PayPal", "ApplePay", "GooglePay", "BankTransfer", "GiftCard",
                  "CashOnDelivery"}
-- two lines: 2 x (a.50 - 0.50) + 1 x (b.25 - 0.25) = 2a + b, exactly
local fmt = '{"SessionId":"sess-%s-%d-%d-%d","TimeStamp":"2026-11-22T10:%02d:%02dZ","UserId":"user-%d",' ..
            '"TotalPrice":%d,"OrderId":"order-%s-%d-%d-%d","PaymentType":"%s","Products":[' ..
            '{"ProductId":"sku-%05d","ItemCount":2,"ItemPrice":%d.50,"ItemDiscount":0.50},' ..
            '{"ProductId":"sku-%05d","ItemCount":1,"ItemPrice":%d.25,"ItemDiscount":0.25}]}'

function request()
  sent = sent + 1
  local n = sent
  local parts = {}
  for i = 1, per_request do
    local k = n * per_request + i
    local a, b = 1 + k % 300, 1 + (k * 7) % 200
    parts[i] = string.format(fmt, run, id, n, i, k % 60, (k * 13) % 60, (k * 7919 + id * 104729) % 20000,
                             2 * a + b, run, id, n, i, payments[k % 8 + 1], k % 5000, a, (k * 31) % 5000, b)
  end
  -- one sender per request, varied as send_event.lua's users (a purchase's user would not do:
  -- with 100 per request the first ones' fall on 20 visitors a thread)
  local sender = (n * 7919 + id * 104729) % 20000
  return wrk.format(nil, nil, headers_of(sender), "[" .. table.concat(parts, ",") .. "]")
end
