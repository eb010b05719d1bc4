"""Write a demo data set: recipients.jsonl and events.jsonl (deterministic for a seed).

1,200 recipients over 6 time zones (New York and Berlin observe DST), 80% daily and
20% weekly; 60,000 events in 5 categories over a week, with popular posts that many
users hear about (a few entities take most of the activity, as in real feeds).
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/Sao_Paulo",
]
FIRST = [
    "Ana",
    "Ben",
    "Chloé",
    "Dmitri",
    "Eun-ji",
    "Farah",
    "Gus",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemal",
    "Lena",
    "Mateo",
    "Nia",
    "Olu",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Vik",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoë",
]
LAST = [
    "Silva",
    "Müller",
    "Tanaka",
    "Okafor",
    "Smith",
    "Kowalski",
    "Haddad",
    "Nguyen",
    "García",
    "Johansson",
    "Rossi",
    "Kim",
]
TOPICS = [
    "Trip photos from Lisbon",
    "Sourdough, week 3",
    "Our new office",
    "Rust vs Go, again",
    "Garden update",
    "Conference talk slides",
    "Marathon training log",
    "Recipe: dal",
    "Board game night",
    "Moving to Berlin",
    "Release notes 2.0",
    "Cat pictures",
    "Book club: Dune",
    "Bike repair tips",
    "Quarterly planning",
    "Hiking the Alps",
]
COMMENTS = [
    "Love this!",
    "Where was this taken?",
    "Great write-up, thanks for sharing.",
    "I disagree with the second point, but nicely argued.",
    "Count me in!",
    "Can you share the recipe?",
    "This made my day 😄",
    "Saving this for later.",
]
CATEGORIES = [
    ("comment", 0.30),
    ("like", 0.40),
    ("mention", 0.10),
    ("follow", 0.12),
    ("share", 0.08),
]


def write(out: Path, recipients: int, events: int, seed: int, now: datetime) -> None:
    rand = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    names = {}
    with (out / "recipients.jsonl").open("w", encoding="utf-8") as f:
        for i in range(1, recipients + 1):
            name = f"{rand.choice(FIRST)} {rand.choice(LAST)}"
            names[i] = name
            row: dict[str, object] = {
                "user_id": str(i),
                "email": f"user{i}@example.com",
                "name": name,
                "cadence": "weekly" if rand.random() < 0.2 else "daily",
                "timezone": ZONES[i % len(ZONES)],
                "send_hour": rand.choice([7, 8, 8, 8, 9]),
                "weekly_day": rand.randint(1, 7),
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    posts = [(p, rand.choice(TOPICS)) for p in range(1, 2001)]
    weights = [1 / (rank**1.1) for rank in range(1, len(posts) + 1)]  # Zipf-like popularity
    categories, category_weights = zip(*CATEGORIES, strict=True)
    with (out / "events.jsonl").open("w", encoding="utf-8") as f:
        for n in range(events):
            user = rand.randint(1, recipients)
            actor = rand.randint(1, recipients)
            category = rand.choices(categories, category_weights)[0]
            created = now - timedelta(seconds=rand.randint(60, 7 * 24 * 3600))
            if category == "follow":
                entity_type, entity_id, title = "user", str(user), "you"
            else:
                post, topic = rand.choices(posts, weights)[0]
                entity_type, entity_id, title = "post", str(post), topic
            payload: dict[str, str] = {
                "actor_name": names[actor],
                "title": title,
                "url": f"https://example.com/{entity_type}s/{entity_id}",
            }
            if category in ("comment", "mention"):
                payload["excerpt"] = rand.choice(COMMENTS)
            row = {
                "user_id": str(user),
                "category": category,
                "entity_type": entity_type,
                "entity_id": entity_id,
                "actor_id": str(actor),
                "payload": payload,
                "created_at": created.isoformat(),
                "event_key": f"demo-{n}",
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--recipients", type=int, default=1200)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    write(args.out, args.recipients, args.events, args.seed, datetime.now(UTC))


if __name__ == "__main__":
    main()
