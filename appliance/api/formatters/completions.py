"""The completions API's answer: a text_completion, or the same shape per engine output as its stream.

With echo, each choice begins with its prompt's text (and, with logprobs, the prompt's tokens'
logprobs, whose offsets the output's continue); in a stream the prompt is the choice's first chunk.
"""

from appliance.api.formatters.base import Formatter, openai_usage
from appliance.api.generation import Choice, Generation, Update
from appliance.api.schemas import Completion, CompletionChoice, CompletionLogprobs


class CompletionFormatter(Formatter):
    def __init__(self, generation: Generation, request_id: str, model: str, logprobs: int | None,
                 include_usage: bool, echoed: list[str] | None):
        super().__init__(generation, request_id, model)
        self.top = logprobs  # None: no logprobs
        self.include_usage = include_usage
        self.echoed = echoed  # each prompt's text, with echo
        self._offsets: dict[int, int] = {}  # choice -> text offset of its next token (logprobs)

    def body(self) -> Completion:
        choices = []
        for c in self.generation.choices:
            text, logprobs = "".join(c.text), None
            if self.top is not None:
                logprobs = self._logprobs(c.tokens, 0)[0]
            if self.echoed is not None:
                prompt = self.echoed[c.prompt_index]
                text = prompt + text
                if self.top is not None:
                    logprobs = self._echoed_logprobs(c, prompt)
            choices.append(CompletionChoice(index=c.index, text=text, logprobs=logprobs, finish_reason=c.finish_reason,
                                            stop_reason=c.stop_reason))
        return Completion(id=self.request_id, model=self.model, choices=choices, usage=openai_usage(self.generation.counts()))

    def chunks(self, choice: Choice, update: Update) -> list[Completion]:
        chunks = []
        if choice.index not in self._offsets:
            self._offsets[choice.index] = 0
            if self.echoed is not None:
                chunks.append(self._echo_chunk(choice))
        logprobs = None
        if self.top is not None:
            logprobs, self._offsets[choice.index] = self._logprobs(update.logprobs, self._offsets[choice.index])
        entry = CompletionChoice(index=choice.index, text=update.text, logprobs=logprobs,
                                 finish_reason=choice.finish_reason if update.finished else None,
                                 stop_reason=choice.stop_reason if update.finished else None)
        return chunks + [Completion(id=self.request_id, created=self.created, model=self.model, choices=[entry])]

    def closing(self) -> list[Completion]:
        if not self.include_usage:
            return []
        return [Completion(id=self.request_id, created=self.created, model=self.model, choices=[],
                           usage=openai_usage(self.generation.counts()))]

    def _echo_chunk(self, choice: Choice) -> Completion:
        prompt = self.echoed[choice.prompt_index]
        logprobs = None
        if self.top is not None:
            logprobs, _ = self._logprobs(choice.prompt_tokens, 0)
            self._offsets[choice.index] = len(prompt)
        entry = CompletionChoice(index=choice.index, text=prompt, logprobs=logprobs)
        return Completion(id=self.request_id, created=self.created, model=self.model, choices=[entry])

    def _logprobs(self, sampled: list, offset: int) -> tuple[CompletionLogprobs, int]:
        lp = CompletionLogprobs()
        for t in sampled:
            text = self.token_text(t.token_id)
            lp.tokens.append(text)
            lp.token_logprobs.append(t.logprob)
            lp.text_offset.append(offset)
            offset += len(text)
            if t.logprob is None:  # the prompt's first token: nothing before it to predict it, as OpenAI
                lp.top_logprobs.append(None)
                continue
            alternatives = {text: t.logprob}  # the sampled token first, then the best `top`: up to top + 1, as OpenAI
            for i, value in (t.top_logprobs or [])[:self.top]:
                alternatives.setdefault(self.token_text(i), value)
            lp.top_logprobs.append(alternatives)
        return lp, offset

    def _echoed_logprobs(self, choice: Choice, prompt: str) -> CompletionLogprobs:
        """The prompt's tokens' logprobs, then the output's, whose offsets count from the end of the prompt's text."""
        lp = self._logprobs(choice.prompt_tokens, 0)[0]
        out = self._logprobs(choice.tokens, len(prompt))[0]
        return CompletionLogprobs(text_offset=lp.text_offset + out.text_offset,
                                  token_logprobs=lp.token_logprobs + out.token_logprobs,
                                  tokens=lp.tokens + out.tokens, top_logprobs=lp.top_logprobs + out.top_logprobs)
