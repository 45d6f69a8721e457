"""Placeholder toxicity lexicon (replaced by issue 15's trained classifier). GENERATED: do not edit.

Derived by pipelines/monitoring/make_toxicity_lexicon.py from Davidson et al. 2017,
t-davidson/hate-speech-and-offensive-language (MIT, Copyright (c) 2017 Tom Davidson):
20620 hate/offensive vs 4163 neither tweets; min_docs=15, min_precision=0.97,
min_z=4.0, max_words=200. WARNING: offensive words by design. word -> log-odds z-score.
"""

WORDS: dict[str, float] = {
    'bitch': 28.656,
    'bitches': 17.157,
    'hoes': 15.813,
    'pussy': 14.904,
    'hoe': 14.809,
    'ass': 12.355,
    'shit': 11.481,
    'fuck': 11.432,
    'nigga': 10.43,
    'niggas': 8.476,
    'fucking': 7.714,
    'faggot': 6.458,
    'dick': 5.926,
    'fag': 5.064,
    'nigger': 5.004,
    'niggah': 4.979,
    'fuckin': 4.769,
    'cunt': 4.738,
    'fucked': 4.037,
}
