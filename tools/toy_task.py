"""A generated translation task for the main job's demo: small enough to learn in a couple of minutes on 2 cores,
structured enough that a model must attend and reorder (not just copy word by word).

    python tools/toy_task.py --out DIR [--train 20000] [--valid 300] [--seed 7]

writes DIR/{train,valid,test}.{src,tgt}. The source language is English-like: "the big red dog sees a small
cat near the house". The target is a made-up language with its own words (a fixed lexicon), adjectives after
their noun in reverse order ("dog red big"), the verb moved to the end of its clause, and a plural marker
suffix; numbers are spelled out and move with their noun. Same seed, same files.
"""
import argparse
import os
import random

NOUNS = {"dog": "hund", "cat": "katze", "house": "haus", "tree": "baum", "car": "wagen", "bird": "vogel",
         "man": "mann", "woman": "frau", "child": "kind", "river": "fluss", "ball": "kugel", "book": "buch",
         "table": "tisch", "horse": "pferd", "boat": "boot", "garden": "garten"}
ADJECTIVES = {"big": "gross", "small": "klein", "red": "rot", "blue": "blau", "old": "alt", "young": "jung",
              "happy": "froh", "green": "gruen", "fast": "schnell", "quiet": "still"}
VERBS = {"sees": "sieht", "likes": "mag", "finds": "findet", "follows": "folgt", "paints": "malt",
         "watches": "schaut", "holds": "haelt", "visits": "besucht"}
DETERMINERS = {"the": "der", "a": "ein", "every": "jeder", "this": "dieser"}
PREPOSITIONS = {"near": "bei", "behind": "hinter", "under": "unter", "with": "mit"}
NUMBERS = {"two": "zwei", "three": "drei", "four": "vier", "five": "fuenf"}
CONJUNCTION = ("and", "und")


def noun_phrase(rng):
    """(source words, target words)."""
    adjectives = rng.sample(sorted(ADJECTIVES), rng.choice([0, 0, 1, 1, 2]))
    noun = rng.choice(sorted(NOUNS))
    if rng.random() < 0.25:
        number = rng.choice(sorted(NUMBERS))
        src = [number] + adjectives + [noun + "s"]
        tgt = [NUMBERS[number], NOUNS[noun] + "en"] + [ADJECTIVES[a] for a in reversed(adjectives)]
    else:
        det = rng.choice(sorted(DETERMINERS))
        src = [det] + adjectives + [noun]
        tgt = [DETERMINERS[det], NOUNS[noun]] + [ADJECTIVES[a] for a in reversed(adjectives)]
    return src, tgt


def clause(rng):
    subj_src, subj_tgt = noun_phrase(rng)
    obj_src, obj_tgt = noun_phrase(rng)
    verb = rng.choice(sorted(VERBS))
    src, tgt = subj_src + [verb] + obj_src, subj_tgt + obj_tgt
    if rng.random() < 0.4:
        prep = rng.choice(sorted(PREPOSITIONS))
        pp_src, pp_tgt = noun_phrase(rng)
        src += [prep] + pp_src
        tgt += [PREPOSITIONS[prep]] + pp_tgt
    return src, tgt + [VERBS[verb]]  # verb-final


def sentence(rng):
    src, tgt = clause(rng)
    if rng.random() < 0.3:
        src2, tgt2 = clause(rng)
        src, tgt = src + [CONJUNCTION[0]] + src2, tgt + [CONJUNCTION[1]] + tgt2
    return " ".join(src), " ".join(tgt)


def generate(count, seed, exclude=()):
    rng = random.Random(seed)
    seen, pairs = set(exclude), []
    while len(pairs) < count:
        src, tgt = sentence(rng)
        if src not in seen:
            seen.add(src)
            pairs.append((src, tgt))
    return pairs


def write_task(out_dir, train=20000, valid=300, test=300, seed=7):
    """Writes {train,valid,test}.{src,tgt} into out_dir (valid and test sentences never occur in train)."""
    os.makedirs(out_dir, exist_ok=True)
    held_out = generate(valid + test, seed + 1)
    train_pairs = generate(train, seed, exclude={s for s, _ in held_out})
    splits = {"train": train_pairs, "valid": held_out[:valid], "test": held_out[valid:]}
    for name, pairs in splits.items():
        for side, k in (("src", 0), ("tgt", 1)):
            with open(os.path.join(out_dir, f"{name}.{side}"), "w", encoding="utf-8") as f:
                f.writelines(pair[k] + "\n" for pair in pairs)
    return {name: len(pairs) for name, pairs in splits.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--valid", type=int, default=300)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    counts = write_task(args.out, args.train, args.valid, args.test, args.seed)
    print(" ".join(f"{k} {v}" for k, v in counts.items()), "pairs in", args.out)


if __name__ == "__main__":
    main()
