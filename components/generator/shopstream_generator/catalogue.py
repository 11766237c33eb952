"""The shop's world, made by Faker from a seed: a pool of users and a product catalogue.

The same seed and sizes always give the same world. Users come back (activity
weights are heavy-tailed, so a few users shop a lot), each has favourite products
they buy again and again, a preferred payment type, and one browser at one address
(`visitors`; a few are crawlers). Products have a name, category and brand, users a
signup date and a home city (where their address is): the dimension data the generator
publishes (`dimensions`), drawn from a Faker of its own so every other draw is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import accumulate

from faker import Faker

from shopstream.contracts import PaymentType
from shopstream.enrichment import place

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

# The shop's departments and what each sells; a product is "<brand> <adjective> <noun>".
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Electronics": ("Headphones", "Speaker", "Charger", "Power Bank", "Smartwatch", "Keyboard", "Webcam"),
    "Home & Kitchen": ("Kettle", "Frying Pan", "Knife Set", "Coffee Grinder", "Blender", "Toaster"),
    "Clothing": ("T-Shirt", "Hoodie", "Jeans", "Rain Jacket", "Sweater", "Scarf"),
    "Shoes": ("Running Shoes", "Sneakers", "Boots", "Sandals", "Loafers", "Slippers"),
    "Beauty": ("Face Cream", "Shampoo", "Lip Balm", "Perfume", "Body Lotion", "Sunscreen"),
    "Sports & Outdoors": ("Yoga Mat", "Water Bottle", "Backpack", "Tent", "Dumbbells", "Cycling Gloves"),
    "Toys & Games": ("Puzzle", "Board Game", "Building Blocks", "Plush Bear", "Card Game", "Kite"),
    "Books": ("Cookbook", "Novel", "Travel Guide", "Notebook", "Sketchbook", "Atlas"),
    "Garden": ("Watering Can", "Pruning Shears", "Planter", "Garden Hose", "Bird Feeder", "Seed Kit"),
    "Pet Supplies": ("Dog Bed", "Cat Tree", "Leash", "Pet Bowl", "Chew Toy", "Litter Box"),
}
ADJECTIVES = ("Classic", "Compact", "Deluxe", "Eco", "Essential", "Pro", "Ultra", "Smart", "Premium", "Lite")
BRANDS_PER_CATEGORY = 4
SIGNUP_FROM, SIGNUP_DAYS = date(2019, 1, 1), 7 * 365  # signups spread over 2019-2025


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    price: Decimal  # per unit, in cents precision
    discount: Decimal  # per unit, 0 when not on sale; never above price
    name: str
    category: str
    brand: str


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    favourites: tuple[Product, ...]  # what this user keeps coming back for
    payment_type: PaymentType  # used for most of this user's orders
    visitor: Visitor  # their browser and address, for good
    signup_date: date
    home_country: str  # where their address is, as enrichment places it (ISO code)
    home_city: str


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


class Labels:
    """Names, categories, brands and signup dates, from a Faker of their own (`catalogue:<seed>`):
    drawing them leaves the world's own draws, and so its products, prices and users, as they were."""

    def __init__(self, seed: int) -> None:
        fake = seeded_faker(f"catalogue:{seed}")
        self.rnd = fake.random
        self.categories = tuple(sorted(CATEGORIES))
        self.brands = {c: tuple(fake.unique.last_name() for _ in range(BRANDS_PER_CATEGORY)) for c in self.categories}

    def product(self) -> tuple[str, str, str]:
        """(name, category, brand)."""
        category = self.rnd.choice(self.categories)
        brand = self.rnd.choice(self.brands[category])
        name = f"{brand} {self.rnd.choice(ADJECTIVES)} {self.rnd.choice(CATEGORIES[category])}"
        return name, category, brand

    def signup(self) -> date:
        return SIGNUP_FROM + timedelta(days=self.rnd.randrange(SIGNUP_DAYS))


def build_world(seed: int, users: int = 500, products: int = 200) -> World:
    """A deterministic world for `seed`: `users` shoppers and `products` products."""
    if users < 1 or products < 1:
        raise ValueError("a world needs at least one user and one product")
    fake = seeded_faker(f"world:{seed}")
    rnd = fake.random

    labels = Labels(seed)
    numbers = rnd.sample(range(10_000, 10_000 + 10 * products), products)
    catalogue = []
    for n in numbers:
        price = _price(fake)
        catalogue.append(Product(f"sku-{n}", price, _discount(fake, price), *labels.product()))
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
        visitor = draw_visitor(visitors)
        country, _, city = place(visitor.stored_ip)
        pool.append(User(f"user-{n}", tuple(favourites), payment, visitor, labels.signup(), country, city))
    # Heavy-tailed activity: some users return every few seconds, most now and then.
    activity = tuple(accumulate(min(rnd.paretovariate(1.5), 25.0) for _ in range(users)))

    return World(seed, tuple(pool), tuple(catalogue), activity, product_cum)
