"""Prompts of two domains for measuring online learning (benchmarks/online_learning.py), written
for it: none comes from Spec-Bench or tandem's training prompts, so what the drafter learns
online is the domain, not the benchmark. Per domain, 16 prompts the drafter learns from and 8
unseen ones of the same kind it is measured on.
"""

from __future__ import annotations

CODING_LEARN = (
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function that counts the words in a text file.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write a Python function that removes duplicates from a list while keeping the order.",
    "Write a Python function that flattens a nested list of integers.",
    "Write a Python function that returns the prime numbers below n.",
    "Write a Python class for a stack with push, pop and peek methods.",
    "Write a Python function that reverses the words of a sentence.",
    "Write a Python function that computes the factorial of n recursively.",
    "Write a Python function that finds the most common character in a string.",
    "Write a Python function that converts a temperature from Celsius to Fahrenheit.",
    "Write a Python function that returns the second largest number in a list.",
    "Write a Python function that checks whether two strings are anagrams.",
    "Write a Python function that sums the digits of an integer.",
    "Write a Python function that does a binary search on a sorted list.",
)
CODING_TEST = (
    "Write a Python function that counts the vowels in a string.",
    "Write a Python function that returns the greatest common divisor of two numbers.",
    "Write a Python class for a queue with enqueue and dequeue methods.",
    "Write a Python function that rotates a list by k positions.",
    "Write a Python function that checks whether a number is a perfect square.",
    "Write a Python function that capitalizes the first letter of every word.",
    "Write a Python function that returns the length of the longest word in a sentence.",
    "Write a Python function that transposes a matrix given as a list of lists.",
)
COOKING_LEARN = (
    "How do I make a simple tomato soup at home?",
    "What is the best way to cook rice on the stove?",
    "How do I bake a loaf of banana bread?",
    "Give me a recipe for a quick vegetable stir fry.",
    "How long should I boil an egg for a soft yolk?",
    "How do I make pancakes from scratch?",
    "What spices go well in a lentil curry?",
    "How do I roast potatoes so they are crispy?",
    "Give me a recipe for a simple pasta with garlic and olive oil.",
    "How do I make a basic vinaigrette for a salad?",
    "How do I cook a chicken breast so it stays juicy?",
    "What can I cook with leftover rice?",
    "How do I make guacamole?",
    "How do I bake chocolate chip cookies?",
    "Give me a recipe for a warm oatmeal breakfast.",
    "How do I make a omelette with cheese and herbs?",
)
COOKING_TEST = (
    "How do I make a creamy mushroom soup?",
    "What is a simple recipe for hummus?",
    "How do I cook salmon in the oven?",
    "Give me a recipe for a fresh fruit salad.",
    "How do I make mashed potatoes?",
    "How do I bake a simple apple pie?",
    "What is a good recipe for a bean chili?",
    "How do I make French toast?",
)
DOMAINS = {
    "coding": (CODING_LEARN, CODING_TEST),
    "cooking": (COOKING_LEARN, COOKING_TEST),
}
