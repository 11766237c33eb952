"""The shop's world, made by Faker from a seed: a pool of users and a product catalogue.

The same seed and sizes always give the same world. Users come back (activity
weights are heavy-tailed, so a few users shop a lot), each has favourite products
they buy again and again, a preferred payment type, and one browser at one address
(`visitors`; a few are crawlers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from itertools import accumulate

from faker import Faker

from shopstream.contracts import PaymentType

from .visitors import Visitor, draw_visitor

CENT = Decimal("0.01")
LOCALE = "en_US"  # fixed, so the world does not depend on the machine's locale

# Share of online orders per payment type (roughly a European/US shop mix).
PAYMENT_WEIGHTS: dict[PaymentType, int] = {
    PaymentType.CreditCard: 34,
    PaymentType.DebitCard: 20,
    PaymentType.PayPal: 18,
    PaymentType.ApplePay: 10,
    PaymentType.GooglePay: 6,
    PaymentType.BankTransfer: 5,
    PaymentType.CashOnDelivery: 4,
    PaymentType.GiftCard: 3,
}
PAYMENT_TYPES = tuple(PAYMENT_WEIGHTS)
PAYMENT_CUM_WEIGHTS = tuple(accumulate(PAYMENT_WEIGHTS.values()))
DISCOUNT_PERCENTS = (5, 10, 15, 20, 25, 30, 40)


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    price: Decimal  # per unit, in cents precision
    discount: Decimal  # per unit, 0 when not on sale; never above price


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    favourites: tuple[Product, ...]  # what this user keeps coming back for
    payment_type: PaymentType  # used for most of this user's orders
    visitor: Visitor  # their browser and address, for good


@dataclass(frozen=True, slots=True)
class World:
    seed: int
    users: tuple[User, ...]
    products: tuple[Product, ...]
    user_cum_weights: tuple[float, ...]  # for random.choices: who visits the shop
    product_cum_weights: tuple[float, ...]  # for random.choices: what gets looked at


def seeded_faker(seed: int | str) -> Faker:
    fake = Faker(LOCALE)
    fake.seed_instance(seed)
    return fake


def _price(fake: Faker) -> Decimal:
    """Log-uniform between about 3 and 400, mostly ending in .99."""
    whole = max(3, round(math.exp(fake.random.uniform(math.log(3), math.log(400)))))
    cents = fake.random.choices((99, 49, 0, None), weights=(70, 10, 10, 10))[0]
    if cents is None:
        cents = fake.random.randint(1, 98)
    if cents == 0:
        return Decimal(whole).quantize(CENT)
    return (Decimal(whole - 1) + Decimal(cents) / 100).quantize(CENT)


def _discount(fake: Faker, price: Decimal) -> Decimal:
    if fake.random.random() >= 0.3:  # 30% of the catalogue is on sale
        return Decimal("0.00")
    percent = fake.random.choice(DISCOUNT_PERCENTS)
    return (price * percent / 100).quantize(CENT, rounding=ROUND_HALF_UP)


def build_world(seed: int, users: int = 500, products: int = 200) -> World:
    """A deterministic world for `seed`: `users` shoppers and `products` products."""
    if users < 1 or products < 1:
        raise ValueError("a world needs at least one user and one product")
    fake = seeded_faker(f"world:{seed}")
    rnd = fake.random

    numbers = rnd.sample(range(10_000, 10_000 + 10 * products), products)
    catalogue = []
    for n in numbers:
        price = _price(fake)
        catalogue.append(Product(f"sku-{n}", price, _discount(fake, price)))
    # Popularity follows a Zipf-like curve, so "top-selling products" has a clear answer.
    popularity = [1 / (rank + 1) ** 0.9 for rank in range(products)]
    rnd.shuffle(popularity)
    product_cum = tuple(accumulate(popularity))

    # drawn from their own seed, so the users and products above stay as they were before
    visitors = seeded_faker(f"visitors:{seed}")
    pool = []
    for n in rnd.sample(range(1_000, 1_000 + 20 * users), users):
        k = min(products, rnd.randint(2, 5))
        favourites: list[Product] = []
        while len(favourites) < k:  # distinct, biased to popular products
            p = rnd.choices(catalogue, cum_weights=product_cum)[0]
            if p not in favourites:
                favourites.append(p)
        payment = rnd.choices(PAYMENT_TYPES, cum_weights=PAYMENT_CUM_WEIGHTS)[0]
        pool.append(User(f"user-{n}", tuple(favourites), payment, draw_visitor(visitors)))
    # Heavy-tailed activity: some users return every few seconds, most now and then.
    activity = tuple(accumulate(min(rnd.paretovariate(1.5), 25.0) for _ in range(users)))

    return World(seed, tuple(pool), tuple(catalogue), activity, product_cum)
