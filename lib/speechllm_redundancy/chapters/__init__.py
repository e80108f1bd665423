"""The analysis behind each chapter of the book, one module per chapter: what it measures (through
``experiments.Study``, which owns every cache), the tables and figures it shows, the numbers its prose
quotes and its verdicts on the paper's claims (worded in ``verdicts``). A chapter is then a question, one
or two calls here, and what they show; a script can make the same calls on its own models and corpus.

- ``origin``            chapter 1: distance maps of text and speech, where the closest blocks lie, LoRA
- ``healing_dynamics``  chapter 2: the four healing strategies, speech- vs text-derived pruning path
- ``scales``            chapter 3: removable fraction by decoder size (the paper's Table 1)
- ``translation``       chapter 4: the ASR-derived path on speech translation (Table 2)
- ``efficiency``        chapter 5: time and memory the pruned SpeechLLM saves, against the ideal
"""
