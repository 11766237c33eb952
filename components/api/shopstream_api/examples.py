"""Example bodies for the OpenAPI docs (validated against the contracts by the tests)."""

USER_EVENT_EXAMPLE = {
    "UserId": "user-1042",
    "SessionId": "sess-7f3a9c",
    "EventName": "AddedBasket",
    "TimeStamp": "2026-11-22T10:15:00Z",
    "Attributes": {"ProductId": "sku-00017", "Price": 49.9, "Discount": 5.0},
}

PURCHASE_EXAMPLE = {
    "SessionId": "sess-7f3a9c",
    "TimeStamp": "2026-11-22T10:21:30Z",
    "UserId": "user-1042",
    "TotalPrice": 104.8,
    "OrderId": "order-99812",
    "Products": [
        {"ProductId": "sku-00017", "ItemCount": 2, "ItemPrice": 49.9, "ItemDiscount": 5.0},
        {"ProductId": "sku-00003", "ItemCount": 1, "ItemPrice": 15.0, "ItemDiscount": 0.0},
    ],
    "PaymentType": "CreditCard",
}
