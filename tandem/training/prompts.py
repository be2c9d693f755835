"""The prompt set an EAGLE-3 head is distilled on: written here, generated from a seed.

Self-distillation needs text the target itself would write, so the training set is the target's
own greedy answers to these prompts (see `tandem.training.data`). The prompts are built from
templates and word lists written for tandem, in the kinds of request a chat model serves:
writing, role play, explanation, reasoning, arithmetic, code, lists, questions, long answers;
in a second stage, tasks over a passage (summary, questions, extraction, translation) whose
passages are articles the target wrote in the first stage; in a third, a follow-up turn on a
first-stage conversation. No benchmark prompt is used or imitated word for word; nothing is
downloaded.

`stage_one(seed, n)`, `stage_two(seed, articles)` and `stage_three(seed, answers)` are
deterministic: the same seed gives the same prompts, so `tandem draft data` reproduces a data
set from its recorded recipe.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass


def _words(text: str) -> tuple[str, ...]:
    """A comma-separated word list written across lines."""
    return tuple(w.strip() for w in text.split(",") if w.strip())


TOPICS = _words(
    """
    honeybees, volcanoes, the water cycle, bread baking, chess openings, rivers,
    jazz music, bicycles, solar panels, the Roman Empire, coral reefs, coffee,
    public libraries, the immune system, electric cars, origami, desert plants,
    the printing press, black holes, recycling, marathon training, tea ceremonies,
    lighthouses, the human heart, vaccines, glaciers, board games, photography,
    urban gardening, the Silk Road, earthquakes, penguins, renewable energy, ancient Egypt,
    sleep, the stock market, volunteering, wolves, rainforests, the internet,
    classical music, pottery, space exploration, climate change, fermentation, trains,
    the Olympic Games, mushrooms, bridges, medieval castles, tides, language learning,
    chocolate, wind turbines, the moon, octopuses, public transport, knitting,
    the Renaissance, soil, hiking, clocks, artificial intelligence, bees and pollination,
    the French Revolution, snow, spices, submarines, street food, microscopes, deserts,
    friendship, time management, museums, rice, the periodic table, dinosaurs, rainbows,
    personal budgeting, the piano, satellites, forests, olive oil, bats, video games,
    the human brain, paper, kites, mountains, cheese, robots, bird migration,
    the Great Wall of China, photosynthesis, whales, poetry, airplanes, vitamins,
    castles in Scotland, the Amazon river, yoga, maps, batteries, ants,
    the Industrial Revolution, gardening, storms, elephants, cooking pasta,
    the solar system, democracy, remote work, magnets, salt, bamboo, dolphins, meditation,
    the Arctic, cryptography, wine making, skateboarding, the postal service, fireflies,
    camping, glass making
    """
)

ROLES = _words(
    """
    ship captain, baker, astronaut, museum guide, detective, gardener, school teacher,
    mountain guide, librarian, chef, zookeeper, pilot, travel agent, park ranger,
    fitness coach, tour guide in Rome, medieval knight, robot butler, news reporter,
    village doctor, lighthouse keeper, street musician, wizard, pirate, time traveler,
    customer support agent, football coach
    """
)

PEOPLE = _words(
    """
    Anna, Ben, Carlos, Dana, Emil, Fatima, George, Hana, Ivan, Julia, Kofi, Lena, Mateo,
    Nora, Omar, Priya, Quinn, Rosa, Sam, Tomas, Uma, Victor, Wen, Yusuf, Zoe
    """
)

ITEMS = (
    ("apple", 2),
    ("notebook", 4),
    ("pencil", 1),
    ("sandwich", 6),
    ("ticket", 12),
    ("book", 15),
    ("plant", 9),
    ("mug", 7),
    ("shirt", 20),
    ("cake", 18),
    ("ball", 5),
    ("lamp", 25),
    ("bottle of juice", 3),
    ("pair of socks", 8),
    ("box of tea", 11),
)

CODE_TASKS = _words(
    """
    reverses a string, checks whether a number is prime,
    returns the largest number in a list, counts the vowels in a sentence,
    computes the factorial of n, merges two sorted lists,
    removes duplicates from a list while keeping the order, converts Celsius to Fahrenheit,
    checks whether a word is a palindrome, returns the n-th Fibonacci number,
    sorts a list of dictionaries by a key, counts how often each word appears in a text,
    flattens a nested list, finds the second smallest number in a list,
    validates an email address with a regular expression,
    reads a CSV file and sums a column, computes the average of a list of numbers,
    implements binary search, returns the greatest common divisor of two numbers,
    capitalizes every word in a sentence, checks whether two strings are anagrams,
    transposes a matrix, implements a stack class, finds all even numbers in a list,
    converts a Roman numeral to an integer, computes the sum of the digits of a number,
    rotates a list by k positions, groups words by their first letter,
    returns the intersection of two lists, implements bubble sort
    """
)
LANGUAGES_CODE = ("Python", "Python", "Python", "JavaScript", "C", "Java", "Rust", "Go")
LANGUAGES = ("French", "German", "Spanish", "Italian", "Portuguese", "Chinese", "Japanese")
NUMBERS = (3, 4, 5, 6, 7)

# Stage one: each template takes its blanks from the word lists (see `_fill`).
STAGE_ONE = {
    "writing": (
        "Write a short story about {topic}.",
        "Write a poem about {topic}.",
        "Write a short email to a friend telling them about {topic}.",
        "Write the opening paragraph of a blog post about {topic}.",
        "Write a persuasive paragraph arguing that everyone should learn about {topic}.",
        "Write a diary entry from someone who spent the day learning about {topic}.",
        "Write a short speech for a school event about {topic}.",
        "Write a product description for a new gadget related to {topic}.",
    ),
    "roleplay": (
        "Pretend you are {a_role}. Describe a typical day at work.",
        "You are {a_role}. Give advice to a young person who wants to do your job.",
        "Act as {a_role} and explain {topic} to a visitor.",
        "Imagine you are {a_role} writing a letter home. What do you tell your family?",
        "You are {a_role}. A customer asks you about {topic}. How do you answer?",
    ),
    "explanation": (
        "Explain {topic} in simple terms.",
        "What is the most important thing to know about {topic}?",
        "Explain {topic} to a ten-year-old.",
        "Describe how {topic} works, step by step.",
        "What are the main benefits and drawbacks of {topic}?",
        "Give a short history of {topic}.",
        "Why do people find {topic} interesting?",
        "What are some common misconceptions about {topic}?",
        "Compare {topic} and {topic2}.",
        "How are {topic} and {topic2} related?",
    ),
    "lists": (
        "Give me {n} tips for learning about {topic}.",
        "List {n} interesting facts about {topic}.",
        "Suggest {n} questions a student could ask about {topic}.",
        "What are {n} ways {topic} affects everyday life?",
        "Make a checklist of {n} steps for a weekend project about {topic}.",
    ),
    "reasoning": (
        "{a} is older than {b}, and {b} is older than {c}. Who is the youngest? Explain.",
        "{a} has twice as many books as {b}, and {b} has {x} books. How many books do they "
        "have together? Explain your reasoning.",
        "If every {role} likes {topic} and {a} is {a_role}, what can we conclude? Explain.",
        "{a}, {b} and {c} sit in a row. {a} is not at either end and {b} is to the left of "
        "{a}. Where does {c} sit?",
        "A train leaves at {h}:00 and the trip takes {x} hours. When does it arrive? Explain.",
    ),
    "math": (
        "{a} buys {x} {item}s at {price} dollars each and pays with a {bill} dollar bill. "
        "How much change does {a} get? Show your steps.",
        "What is {x} times {y}, plus {z}? Show your work.",
        "A rectangle is {x} meters long and {y} meters wide. What are its area and perimeter?",
        "{a} saves {x} dollars every week. How much has {a} saved after {y} weeks?",
        "There are {x} students and each group has {n} students. How many full groups are "
        "there, and how many students are left over?",
        "A shop sells a {item} for {price} dollars and gives a {pct} percent discount. What "
        "is the new price?",
        "Solve for x: {n}x + {z} = {w}.",
        "What is the average of {x}, {y} and {z}?",
        "A recipe needs {x} grams of flour for {n} people. How much flour is needed for {y} "
        "people? Explain each step.",
        "{a} runs {n} kilometers a day for {y} days, then {x} kilometers on the last day. How "
        "far did {a} run in total?",
        "What percentage of {w} is {z}? Round to one decimal place and show the calculation.",
        "A tank holds {w} liters and leaks {n} liters per hour. After {h} hours, how much "
        "water is left?",
    ),
    "code": (
        "Write a {lang} function that {task}.",
        "Write a {lang} function that {task}, and explain how it works.",
        "Show me how to write a function in {lang} that {task}. Include an example.",
        "Write a {lang} program that {task} and prints the result.",
        "Here is my task: a function that {task}. Write it in {lang} with comments and tests.",
        "What is the time complexity of a {lang} function that {task}? Write the function and "
        "explain.",
        "Write a {lang} function that {task}. Then show how to call it with two examples.",
    ),
    "questions": (
        "What is {topic}?",
        "Why is {topic} important?",
        "How can I get started with {topic}?",
        "What should a beginner read first about {topic}?",
        "Who was important in the history of {topic}?",
        "What will {topic} look like in fifty years?",
    ),
    "long": (
        "Write a detailed guide to {topic} with sections for beginners and for experts.",
        "Write a long essay on how {topic} has changed over the last hundred years.",
        "Plan a one-week course about {topic}: for each day, the lesson and an exercise.",
        "Write a thorough comparison of {topic} and {topic2}, with a table of differences.",
        "Tell a long adventure story in which {a} the {role} discovers something about {topic}.",
    ),
    "article": (
        "Write a short informative article about {topic}.",
        "Write a short news report about a recent discovery related to {topic}.",
        "Write an encyclopedia-style paragraph about {topic}.",
    ),
}

# Stage two: tasks over an article the target wrote in stage one ({text}, {sentence}).
STAGE_TWO = {
    "summary": (
        "Summarize the following text in a few sentences.\n\n{text}",
        "{text}\n\nWrite a one-paragraph summary of the text above.",
        "Give three bullet points that capture the main ideas of this text:\n\n{text}",
    ),
    "passage_qa": (
        "Read the passage and answer the question.\n\nPassage: {text}\n\nQuestion: What is "
        "the main idea of the passage?",
        "{text}\n\nBased only on the text above, what does it say about {word}?",
        "Use the following text to answer: why does the author think {topic} matters?\n\n{text}",
    ),
    "extraction": (
        "List every number mentioned in the following text and what it refers to.\n\n{text}",
        "Extract the key terms from this text and define each one briefly.\n\n{text}",
        "{text}\n\nWrite down the names and places mentioned in the text above.",
    ),
    "translation": (
        "Translate the following sentence into {language}: {sentence}",
        'How would you say this in {language}? "{sentence}"',
        "Translate into {language}, then explain any difficult words: {sentence}",
    ),
    "rewrite": (
        "Rewrite the following text so that a child could understand it.\n\n{text}",
        "Make this text more formal:\n\n{text}",
    ),
}

# Stage three: a second user turn, by the first turn's category ("any": for every category).
FOLLOW_UPS = {
    "any": (
        "Can you make that shorter?",
        "Explain the most important part of your answer in more detail.",
        "Give me one more example.",
        "Thanks! Can you put that into a numbered list?",
        "Now say the same thing to a ten-year-old.",
        "What would you add if you had more space?",
        "Translate the first sentence of your answer into {language}.",
    ),
    "writing": ("Now write a different ending.", "Give it a title and a one-line summary."),
    "roleplay": ("Stay in character: what is the hardest part of your job?",),
    "explanation": ("How does this relate to {topic}?", "Which part do people often get wrong?"),
    "lists": ("Which of these is the most useful, and why?", "Add two more to the list."),
    "reasoning": ("Are you sure? Check your reasoning step by step.",),
    "math": ("Check your answer another way.", "What if the numbers were doubled?"),
    "code": (
        "Add error handling to the function.",
        "Write two unit tests for it.",
        "Rewrite it to be shorter.",
    ),
    "questions": ("Where can I learn more about this?",),
    "long": ("Summarize what you wrote in three sentences.",),
    "article": ("Write a catchy headline for this article.",),
}


@dataclass(frozen=True)
class PromptSpec:
    """One training prompt: its id (stable across runs), category, text (the last user turn)
    and the conversation before it (user and assistant turns alternating)."""

    id: str
    category: str
    text: str
    history: tuple[str, ...] = ()

    @property
    def turns(self) -> tuple[str, ...]:
        return (*self.history, self.text)


def stage_one(seed: int, n: int) -> list[PromptSpec]:
    """`n` distinct prompts, the categories in turn, templates and blanks drawn from `seed`."""
    rng = random.Random(seed)
    categories = sorted(STAGE_ONE)
    seen: set[str] = set()
    out: list[PromptSpec] = []
    attempts = 0
    while len(out) < n and attempts < 50 * n:
        attempts += 1
        category = categories[len(out) % len(categories)]
        text = _fill(rng.choice(STAGE_ONE[category]), rng)
        if text not in seen:
            seen.add(text)
            out.append(PromptSpec(f"s1-{len(out):05d}", category, text))
    return out


def stage_two(seed: int, articles: Sequence[tuple[str, str]]) -> list[PromptSpec]:
    """One passage task per article: (article id, article text) written by the target in stage
    one. Articles too short to work with are skipped."""
    rng = random.Random(seed + 1)
    categories = sorted(STAGE_TWO)
    out: list[PromptSpec] = []
    for article_id, article in articles:
        text = article.strip()
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if 6 <= len(s.split()) <= 40]
        words = sorted({w for w in re.findall(r"\b[a-z]{6,}\b", text)})
        if len(text.split()) < 30 or not sentences or not words:
            continue
        category = categories[len(out) % len(categories)]
        template = rng.choice(STAGE_TWO[category])
        blanks = {
            "text": text,
            "sentence": rng.choice(sentences),
            "word": rng.choice(words),
            "language": rng.choice(LANGUAGES),
            "topic": rng.choice(TOPICS),
        }
        out.append(PromptSpec(f"s2-{article_id}", category, template.format(**blanks)))
    return out


def stage_three(seed: int, answers: Sequence[tuple[PromptSpec, str]]) -> list[PromptSpec]:
    """A follow-up turn on each stage-one conversation (its prompt, and the answer the target
    gave), but for empty answers."""
    rng = random.Random(seed + 2)
    out: list[PromptSpec] = []
    for spec, answer in answers:
        if not answer.strip():
            continue
        number = spec.id.removeprefix("s1-")
        follow_up = rng.choice(FOLLOW_UPS[spec.category] + FOLLOW_UPS["any"])
        text = follow_up.format(language=rng.choice(LANGUAGES), topic=rng.choice(TOPICS))
        out.append(PromptSpec(f"s3-{number}", "multiturn", text, (spec.text, answer.strip())))
    return out


def _fill(template: str, rng: random.Random) -> str:
    a, b, c = rng.sample(PEOPLE, 3)
    topic, topic2 = rng.sample(TOPICS, 2)
    item, price = rng.choice(ITEMS)
    x, y, z = rng.randint(2, 40), rng.randint(2, 30), rng.randint(1, 99)
    n = rng.choice(NUMBERS)
    role = rng.choice(ROLES)
    blanks = {
        "topic": topic,
        "topic2": topic2,
        "role": role,
        "a_role": ("an " if role[0] in "aeiou" else "a ") + role,
        "a": a,
        "b": b,
        "c": c,
        "n": n,
        "x": x,
        "y": y,
        "z": z,
        "w": n * rng.randint(1, 20) + z,
        "h": rng.randint(5, 20),
        "item": item,
        "price": price,
        "bill": 10 * ((x * price) // 10 + 1),
        "pct": rng.choice((10, 15, 20, 25, 30, 50)),
        "task": rng.choice(CODE_TASKS),
        "lang": rng.choice(LANGUAGES_CODE),
    }
    return template.format(**blanks)
