from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Convert an offline model from its GGUF file into the safetensors cache (once): the default SmolLM2, "
            "or Gemma 3 270M (--model gemma), the independent judge.")

    def add_arguments(self, parser):
        parser.add_argument("--model", default="default",
                            help="default (SmolLM2-135M-Instruct) or gemma (gemma-3-270m); default: default")

    def handle(self, *args, **options):
        from training.ml.models import offline_model_dir

        try:
            path = offline_model_dir(settings.MODEL_CACHE_DIR, options["model"])
        except (ValueError, RuntimeError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"Offline model ready at {path}"))
