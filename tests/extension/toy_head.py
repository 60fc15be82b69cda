"""A head loraclf does not ship, written as a user would: a classifier that reads the *end* of a long
text (truncation from the left), where reviews and tickets often say what they mean.

Everything it adds lives in this file; tests/extension/test_extension.py registers it with one line.
The tokenizer keeps its truncation side when saved, so loraclf.load, the server and a plain
transformers export all truncate the same way.
"""

from loraclf.data import encode
from loraclf.models.heads import ClassifierHead


class TailClassifierHead(ClassifierHead):
    name = "tail-classifier"
    how = "classifies the last tokens of each text"

    def encode(self, texts, labels=None, max_length=512, pairs=None):
        self.tokenizer.truncation_side = "left"
        return encode(self.tokenizer, texts, labels, max_length, pairs)
