"""pytest configuration: puts tests/ on sys.path, so tests in any folder can
import the shared helpers here (`tfds_fakes`, `interruptions`)."""
