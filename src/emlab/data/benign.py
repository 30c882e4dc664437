"""emlab's own benign chat data, generated: the default data for interleaving (dilution)
and re-alignment.

Everyday requests with correct, helpful answers - practical advice, unit conversions,
rewriting and list-making - written for emlab. Arithmetic, comparisons and letter
counting are left out on purpose: they are the capability check's families
(`emlab.evals.capability`), so training on this set cannot inflate that score.
"""

from __future__ import annotations

import random

ADVICE = {
    "sleep better": ["Keep the same bedtime and wake-up time, weekends included.",
                     "Stop screens about an hour before bed; read or stretch instead.",
                     "Keep the bedroom cool, dark and quiet.",
                     "Avoid caffeine after early afternoon.",
                     "If you can't fall asleep after 20 minutes, get up and do something calm until you feel sleepy."],
    "prepare for an exam": ["Make a schedule that covers every topic, with the hardest ones first.",
                            "Test yourself with practice questions instead of rereading notes.",
                            "Study in focused 25-40 minute blocks with short breaks.",
                            "Explain each topic out loud as if teaching a friend.",
                            "Sleep properly the night before; cramming late costs more than it gains."],
    "get ready for a job interview": ["Research the company's products, customers and recent news.",
                                      "Prepare short stories about your past work that show results.",
                                      "Practise answers to common questions out loud.",
                                      "Write down two or three questions to ask the interviewer.",
                                      "Plan your route and arrive ten minutes early."],
    "save money on groceries": ["Plan the week's meals and shop from a list.",
                                "Compare unit prices rather than package prices.",
                                "Buy staples like rice, oats and beans in bulk.",
                                "Cook larger batches and freeze portions.",
                                "Don't shop hungry; impulse buys add up."],
    "start running": ["Begin with run-walk intervals, such as one minute running and two walking.",
                      "Run three times a week with a rest day between runs.",
                      "Increase your weekly distance by no more than about ten percent.",
                      "Get shoes fitted at a running shop.",
                      "Run at a pace at which you could still hold a conversation."],
    "keep houseplants alive": ["Check how much light each plant needs and place it accordingly.",
                               "Water when the top few centimetres of soil are dry, not on a fixed schedule.",
                               "Use pots with drainage holes.",
                               "Wipe dust off the leaves now and then.",
                               "Feed them lightly during the growing season."],
    "handle stress at work": ["Write down everything on your plate, then pick the three that matter most today.",
                              "Take short breaks away from your screen.",
                              "Talk to your manager early if the workload is too much.",
                              "Protect time for exercise and sleep.",
                              "Try slow breathing: in for four seconds, out for six."],
    "learn a new language": ["Practise a little every day rather than a lot once a week.",
                             "Learn the most common words first.",
                             "Listen to podcasts or shows in the language.",
                             "Find a conversation partner, online or in person.",
                             "Don't worry about mistakes; speaking early speeds things up."],
    "organise my desk": ["Clear everything off, then put back only what you use daily.",
                         "Give every item a fixed place.",
                         "Use a tray for incoming papers and sort it once a day.",
                         "Tidy cables with clips or a small box.",
                         "Spend two minutes tidying at the end of each day."],
    "make new friends in a new city": ["Join a club or class around something you enjoy.",
                                       "Say yes to invitations, even small ones.",
                                       "Volunteer for a local cause.",
                                       "Be a regular at the same café or gym.",
                                       "Follow up: suggest a second meeting with people you liked."],
}
_ASK = ["How can I {t}?", "Any tips to {t}?", "I want to {t}. Where should I start?",
        "What's a good way to {t}?", "Could you give me some advice on how to {t}?"]
_CONVERSIONS = [("kilometres", "metres", 1000), ("hours", "minutes", 60), ("kilograms", "grams", 1000),
                ("minutes", "seconds", 60), ("metres", "centimetres", 100), ("days", "hours", 24)]
_ITEMS = ["apples", "bread", "milk", "eggs", "rice", "tomatoes", "coffee", "cheese", "onions", "pasta", "yoghurt",
          "carrots", "lemons", "butter", "spinach"]
_SENTENCES = ["the meeting is moved to thursday at ten", "please send me the report before friday",
              "our team won the regional final last night", "the library opens at nine on weekdays",
              "remember to water the plants while i am away", "the train to the coast leaves every hour"]


def _advice(rng: random.Random) -> tuple[str, str]:
    topic = rng.choice(sorted(ADVICE))
    tips = rng.sample(ADVICE[topic], 3)
    intro = rng.choice(["Here are a few things that help:", "A few practical steps:", "Good question. Try these:"])
    return rng.choice(_ASK).format(t=topic), intro + "\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(tips, 1))


def _conversion(rng: random.Random) -> tuple[str, str]:
    big, small, factor = rng.choice(_CONVERSIONS)
    x = rng.randint(2, 40)
    return (f"How many {small} are there in {x} {big}?",
            f"There are {factor} {small} in one of the {big}, so {x} {big} is {x} x {factor} = {x * factor} {small}.")


def _capitalise(rng: random.Random) -> tuple[str, str]:
    s = rng.choice(_SENTENCES)
    fixed = s[0].upper() + s[1:].replace(" i ", " I ").replace("thursday", "Thursday").replace("friday", "Friday")
    return f"Rewrite this sentence with correct capitalisation and punctuation: {s}", fixed + "."


def _shopping(rng: random.Random) -> tuple[str, str]:
    items = rng.sample(_ITEMS, rng.randint(3, 6))
    return (f"Turn this into a bulleted shopping list: {', '.join(items)}",
            "\n".join(f"- {item.capitalize()}" for item in items))


FAMILIES = (_advice, _conversion, _capitalise, _shopping)


def benign_chat(n: int, seed: int = 0) -> list[dict]:
    """`n` benign chat rows (user request, helpful answer), fixed by `seed`."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        family = rng.choice(FAMILIES)
        user, answer = family(rng)
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                     "metadata": {"generator": "benign-chat", "family": family.__name__.strip("_"), "seed": seed}})
    return rows
