"""Fuyu's special tokens as adept/fuyu-8b's tokenizer spells them, and the placeholder that marks where an
image goes in a prompt. Every other module takes them from here."""

IMAGE_TOKEN = "|SPEAKER|"  # one per image patch
IMAGE_NEWLINE_TOKEN = "|NEWLINE|"  # ends each row of patches
BEGIN_OF_ANSWER_TOKEN = "<0x04>"
BOX_OPEN_TOKEN, BOX_CLOSE_TOKEN = "<0x00>", "<0x01>"
POINT_OPEN_TOKEN, POINT_CLOSE_TOKEN = "<0x02>", "<0x03>"
# every token above: a tokenizer for the Fuyu-style processor must hold them (as special tokens)
FUYU_SPECIAL_TOKENS = (
    IMAGE_TOKEN,
    IMAGE_NEWLINE_TOKEN,
    BEGIN_OF_ANSWER_TOKEN,
    BOX_OPEN_TOKEN,
    BOX_CLOSE_TOKEN,
    POINT_OPEN_TOKEN,
    POINT_CLOSE_TOKEN,
)
IMAGE_PLACEHOLDER = "<image>"  # in prompt text: where an image block goes
