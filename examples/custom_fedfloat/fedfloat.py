# The original README's custom data example, as written.
from fedsync.data import FedData, FIRST

class FedFloat(FedData):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def specs(self, repetition):
        return "Float"

    def receive(self, encoding, repetition):
        if repetition == FIRST:
            return
        self.value = float(encoding)

    def merge(self, encodings, repetition):
        encodings = [float(encoding) for encoding in encodings]
        self.value = sum(encodings)/len(encodings)

    def serialize(self, repetition):
        return str(self.value)
