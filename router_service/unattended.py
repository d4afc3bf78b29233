"""The span that work outliving its caller records on (idempotency.py)."""
from __future__ import annotations

from opentelemetry import trace

from tierwise.serving import record_error


class Carried(trace.Span):
    """The call's span while its caller waits; once the caller is gone, a child span of the work that goes on (the
    call's span has ended and takes no attributes). The current span of the work's task, so the spans the work
    starts are children of whichever it is."""

    def __init__(self, span: trace.Span, tracer: trace.Tracer):
        self._span, self._tracer, self._own = span, tracer, None

    @property
    def unattended(self) -> bool:
        return self._own is not None

    def left(self) -> None:
        if self._own is None:
            self._own = self._tracer.start_span("tierwise.complete.unattended",
                                                context=trace.set_span_in_context(self._span))
            self._span = self._own

    def ended(self, error: BaseException | None) -> None:
        """The work ended, with `error` if it failed: the unattended span, if any, ends with it, its status set as
        a call's span's would be (tierwise.serving.rpc_span)."""
        if self._own is None:
            return
        if error is not None:
            record_error(self._own, error)
        self._own.end()

    # The span of the moment stands in for this one. `end` is the call's or ended(), never the work's.
    def end(self, end_time=None) -> None:
        pass

    def get_span_context(self):
        return self._span.get_span_context()

    def set_attributes(self, attributes) -> None:
        self._span.set_attributes(attributes)

    def set_attribute(self, key, value) -> None:
        self._span.set_attribute(key, value)

    def add_event(self, name, attributes=None, timestamp=None) -> None:
        self._span.add_event(name, attributes, timestamp)

    def add_link(self, context, attributes=None) -> None:
        self._span.add_link(context, attributes)

    def update_name(self, name) -> None:
        self._span.update_name(name)

    def is_recording(self) -> bool:
        return self._span.is_recording()

    def set_status(self, status, description=None) -> None:
        self._span.set_status(status, description)

    def record_exception(self, exception, attributes=None, timestamp=None, escaped=False) -> None:
        self._span.record_exception(exception, attributes, timestamp, escaped)
