// MegaLiveTexture: a live texture for Python (unreal.MegaLiveTextureLibrary) and Blueprint.
//
// Python alone can only make a NEW texture per encoded image (RenderingLibrary.import_buffer_as_texture2d);
// this library keeps one transient texture and overwrites its pixels in place every frame.
//
// Pixel layout: 8-bit RGBA, rows top to bottom, row pitch = Width * 4 bytes exactly (no padding),
// so Pixels.Num() must equal Width * Height * 4. That is the MegaLive server's rgba8 texture as is.
//
// Lifetime: the texture is transient (not saved, not an asset). Whoever creates it must keep it
// referenced -- bound to a material instance parameter, held by an actor's UPROPERTY, or held by
// a Python variable (the Python wrapper keeps a strong reference) -- or the garbage collector frees it.

#pragma once

#include "CoreMinimal.h"
#include "Kismet/BlueprintFunctionLibrary.h"
#include "MegaLiveTextureLibrary.generated.h"

class UTexture2D;

UCLASS()
class MEGALIVETEXTURE_API UMegaLiveTextureLibrary : public UBlueprintFunctionLibrary
{
	GENERATED_BODY()

public:
	/** A transient Width x Height RGBA8 sRGB texture without mips; nullptr for sizes outside 1..8192. */
	UFUNCTION(BlueprintCallable, Category = "MegaLive")
	static UTexture2D* CreateLiveTexture(int32 Width, int32 Height);

	/** Copy Pixels (Width*Height*4 bytes, RGBA8, pitch Width*4) into the texture; false when the size does not match.
	 *  Returns at once: the copy is uploaded by the render thread. */
	UFUNCTION(BlueprintCallable, Category = "MegaLive")
	static bool UpdateLiveTexture(UTexture2D* Texture, const TArray<uint8>& Pixels);
};
